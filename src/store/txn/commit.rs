//! The commit (see the protocol in `txn.rs`): sealing the edited trees,
//! the version record and retention, the one batch of writes and its sync,
//! then publishing the version and freeing what no kept version sees; and
//! where the pages of a commit go.

use std::collections::BTreeSet;

use super::*;

impl WriteTxn<'_> {
    pub(super) fn commit_inner(&mut self, cause: &str, now: u64) -> StoreResult<VersionInfo> {
        let txn = self.txn;
        // Phase timings, logged at debug level.
        let t0 = std::time::Instant::now();
        self.flush_queue()?;
        self.settle_extents();

        // Seal the data tree bottom-up: each parent records its children's
        // checksums, so the root's reference covers the whole new tree.
        let mut sealed = Vec::with_capacity(self.dirty.len());
        let room = self.w.last_nodes[Tree::System as usize];
        let data_root = self.seal_tree(Tree::Data, room, &mut sealed)?;
        let (meta, dropped) = self.record_version(cause, now, data_root)?;
        let t1 = std::time::Instant::now();
        let system_root = self.seal_tree(Tree::System, 0, &mut sealed)?;
        debug_assert!(self.dirty.is_empty(), "edited nodes no tree references");
        self.dirty.clear();
        let slot = Slot {
            txn,
            version: txn,
            time: now,
            data_root,
            system_root,
            hwm: self.w.alloc.hwm(),
            alloc_page: 0,
            alloc_pages: 0,
        };
        let t2 = std::time::Instant::now();
        let t3 = self.write_and_sync(&mut sealed, &slot)?;
        let t4 = std::time::Instant::now();

        // Durable. Publish the version and free what no kept version sees.
        let info = meta.info.clone();
        self.publish(slot, meta, dropped);
        tracing::debug!(
            version = txn,
            pages = sealed.len(),
            data = ?(t1 - t0),
            system = ?(t2 - t1),
            write = ?(t3 - t2),
            sync = ?(t4 - t3),
            free = ?t4.elapsed(),
            "commit"
        );
        Ok(info)
    }

    /// Extents this txn wrote or reserved and then replaced are free again
    /// at once; extents of earlier txns it replaced go to the deadlist
    /// (older versions may still see them).
    fn settle_extents(&mut self) {
        let txn = self.txn;
        for (_, e) in std::mem::take(&mut self.extents_written) {
            self.free_at_commit.push((e.page, e.pages()));
        }
        for (page, len) in std::mem::take(&mut self.reserved) {
            self.free_at_commit.push((page, len.div_ceil(PAGE)));
        }
        for (_, e) in std::mem::take(&mut self.extents_freed) {
            if e.birth >= txn {
                self.free_at_commit.push((e.page, e.pages()));
            } else {
                self.data_freed.push(Dead {
                    birth: e.birth,
                    start: e.page,
                    len: e.pages(),
                });
            }
        }
        for (s, l) in std::mem::take(&mut self.free_at_commit) {
            self.w.alloc.free(s, l);
        }
    }

    /// Puts the version record (and a policy set by this txn) into the
    /// system tree, and deletes the records of the versions retention lets
    /// go; returns the record and the versions dropped.
    fn record_version(
        &mut self,
        cause: &str,
        now: u64,
        data_root: Ptr,
    ) -> StoreResult<(VersionMeta, Vec<u64>)> {
        let txn = self.txn;
        let info = VersionInfo {
            id: txn,
            time: now,
            cause: cause.to_string(),
            changes: self.changes,
            bytes: self.bytes,
            tag: std::mem::take(&mut self.tag),
        };
        let meta = VersionMeta { info, data_root };
        self.put_entry(
            Tree::System,
            &version_key(txn),
            &encode_version(&meta),
            None,
        )?;
        let times: Vec<(u64, u64)> = {
            let sh = self.store.shared.lock();
            sh.versions
                .values()
                .map(|m| (m.info.id, m.info.time))
                .chain([(txn, now)])
                .collect()
        };
        if let Some(p) = &self.policy {
            let text = p.to_text();
            self.put_entry(Tree::System, POLICY_KEY, text.as_bytes(), None)?;
        }
        let keep = self.versions_to_keep(&times, now);
        let dropped: Vec<u64> = times
            .iter()
            .map(|&(id, _)| id)
            .filter(|id| !keep.contains(id))
            .collect();
        for &d in &dropped {
            self.modify(Tree::System, &version_key(d), Op::Delete)?;
        }
        Ok((meta, dropped))
    }

    /// The versions kept after this commit: what the retention policy
    /// selects, less those let go to make room, less the oldest when the
    /// store is over its space cap.
    fn versions_to_keep(&self, times: &[(u64, u64)], now: u64) -> BTreeSet<u64> {
        let txn = self.txn;
        let policy = self
            .policy
            .clone()
            .unwrap_or_else(|| self.store.retention());
        let mut keep = retention::select(times, now, &policy);
        // Versions let go to make room (on a full disk), oldest first.
        for id in &self.let_go_ids {
            if *id != txn {
                keep.remove(id);
            }
        }
        for _ in 0..self.let_go {
            match keep.iter().next() {
                Some(&oldest) if oldest != txn => keep.remove(&oldest),
                _ => break,
            };
        }
        // Over the space cap, the oldest kept version goes too (one per
        // commit: what it frees is known only once it is gone).
        let used = (self.w.alloc.hwm() - self.w.alloc.free_pages()) * PAGE;
        if policy.max_bytes > 0
            && used > policy.max_bytes
            && let Some(&oldest) = keep.iter().next()
            && oldest != txn
        {
            keep.remove(&oldest);
        }
        keep
    }

    /// One batch: the nodes (sorted, so the backend can coalesce adjacent
    /// pages) and the slot; one sync. Returns when the writes were sent
    /// (the sync's start).
    fn write_and_sync(
        &mut self,
        sealed: &mut [(u64, Box<[u8]>)],
        slot: &Slot,
    ) -> StoreResult<std::time::Instant> {
        sealed.sort_unstable_by_key(|(id, _)| *id);
        if self
            .store
            .poison_pending
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // A reserved extent failed to write: this commit would point at it.
            return Err(StoreError::Poisoned);
        }
        let (slot_at, sector) = slot_sector(slot);
        let mut writes: Vec<(u64, &[u8])> = sealed
            .iter()
            .map(|(id, page)| (id * PAGE, &page[..]))
            .collect();
        writes.push((slot_at, &sector));
        // SAFETY: every sealed page was allocated by this txn from pages free
        // at the last commit, which nothing references; the slot sector is
        // only read with `read_copy`.
        unsafe { self.store.backend.write_all(&writes)? };
        for (id, _) in sealed.iter() {
            self.store.verified.set(*id, true);
        }
        let sent = std::time::Instant::now();
        self.store.backend.sync()?;
        Ok(sent)
    }

    /// After the sync: the version is durable. Publishes it, drops the
    /// versions let go (or keeps them until their last snapshot closes),
    /// and frees what no kept version can see any more.
    fn publish(&mut self, slot: Slot, meta: VersionMeta, dropped: Vec<u64>) {
        let txn = self.txn;
        self.done = true;
        if let Some(p) = self.policy.take() {
            self.store.policy_kept(p);
        }
        self.w.slot = slot;
        // A tree this commit did not edit (an empty commit's data tree)
        // keeps the estimate it had.
        for (last, &n) in self.w.last_nodes.iter_mut().zip(&self.sealed_nodes) {
            if n > 0 {
                *last = n;
            }
        }
        let mut removed = Vec::new();
        let kept = {
            let mut sh = self.store.shared.lock();
            sh.versions.insert(txn, meta);
            for d in dropped {
                if let Some(m) = sh.versions.remove(&d) {
                    if sh.pins.contains_key(&d) {
                        sh.dropped_pinned.insert(d, m.data_root);
                    } else {
                        removed.push(d);
                    }
                }
            }
            removed.append(&mut sh.released);
            let mut kept: std::collections::BTreeSet<u64> = sh.versions.keys().copied().collect();
            kept.extend(sh.pins.keys().copied());
            kept
        };
        let w = &mut *self.w;
        for (s, l) in std::mem::take(&mut self.sys_freed) {
            w.alloc.free(s, l);
        }
        w.dead.add(txn, std::mem::take(&mut self.data_freed));
        let mut touched = vec![(txn - 1, txn)];
        for d in removed {
            let succ = kept.range(d + 1..).next().copied().unwrap_or(txn);
            touched.push((d, succ));
        }
        let mut out = Vec::new();
        w.dead.release(&kept, Some(&touched), &mut out);
        for (s, l) in out {
            w.alloc.free(s, l);
        }
        w.alloc.settle();
        self.shrink_if_worth_it();
    }

    /// Gives a large free tail back to the filesystem (keeping the reserve).
    fn shrink_if_worth_it(&mut self) {
        let hwm = self.w.alloc.trim_tail() * PAGE + self.store.opts.reserve;
        let len = self.store.backend.len();
        if len > hwm + GROW_MAX.max(len / 4) {
            let target = hwm.div_ceil(GROW_MIN) * GROW_MIN;
            // SAFETY: everything past the trimmed tail is free: no kept
            // version or open snapshot references it, so no borrow reaches it.
            if let Err(e) = unsafe { self.store.backend.set_len(target) } {
                tracing::warn!("could not shrink the store file: {e}");
            }
        }
    }

    /// Gives every edited node of `tree` its page, continuing what this txn
    /// wrote before where the space is free, and seals them; returns the root.
    ///
    /// No node is written before both trees are sealed, so if the disk (or
    /// the map) is full here, nothing this commit wrote is referenced by
    /// anything durable and the allocator is rolled back when the txn
    /// drops: the commit fails without poisoning the store, and a later one
    /// (after space is freed) can succeed.
    ///
    /// `room` is how many pages will follow this tree's (the system tree's
    /// nodes, after the data tree's): the first node goes where all of them
    /// fit if it cannot continue the txn's last run.
    fn seal_tree(
        &mut self,
        tree: Tree,
        room: u64,
        out: &mut Vec<(u64, Box<[u8]>)>,
    ) -> StoreResult<Ptr> {
        let root = self.roots[tree as usize];
        let mut left = self.count_dirty(root);
        self.sealed_nodes[tree as usize] = left;
        let root = self.seal(root, out, &mut left, room).inspect_err(|e| {
            if e.is_no_space() {
                self.out_of_space_before_writing = true;
            }
        })?;
        debug_assert_eq!(left, 0, "every edited node was sealed");
        self.roots[tree as usize] = root;
        Ok(root)
    }

    /// The edited nodes reachable from `ptr`.
    fn count_dirty(&self, ptr: Ptr) -> u64 {
        match self.dirty.get(&ptr.page) {
            None => 0,
            Some(n) if n.is_leaf() => 1,
            Some(n) => {
                1 + (0..n.len())
                    .map(|i| self.count_dirty(n.child(i)))
                    .sum::<u64>()
            }
        }
    }

    /// Encodes every edited node under `ptr`, children first, each into a
    /// page of its own (`left` counts the nodes still to place), and returns
    /// the reference to it with its final page and checksum.
    fn seal(
        &mut self,
        ptr: Ptr,
        out: &mut Vec<(u64, Box<[u8]>)>,
        left: &mut u64,
        room: u64,
    ) -> StoreResult<Ptr> {
        let Some(mut node) = self.dirty.remove(&ptr.page) else {
            if ptr.page >= TEMP_BASE {
                // An edited node that went missing: never write its
                // stand-in id into a page.
                return Err(StoreError::corrupt(
                    ptr.page,
                    "an edited node has no content at commit",
                ));
            }
            return Ok(ptr);
        };
        if !node.is_leaf() {
            for i in 0..node.len() {
                let child = self.seal(node.child(i), out, left, room)?;
                node.set_child(i, child);
            }
        }
        *left = left.saturating_sub(1);
        let at = self.alloc_pages_with_room(1, *left + room)?;
        let mut page: Box<[u8]> = vec![0u8; PAGE_SIZE].into_boxed_slice();
        let (kind, count) = node.encode(&mut page);
        let sealed = format::seal(&mut page, kind, count, at, self.txn);
        out.push((at, page));
        Ok(sealed)
    }

    /// Allocates `n` pages, right after this txn's previous allocation when
    /// that space is free, so that what one commit writes (extents, overflow
    /// runs, nodes) lies in one stretch of the file: the kernel writes it
    /// back in few large requests, and an `fsync` of a small change waits
    /// for two writes (the stretch and the slot) instead of one per node.
    ///
    /// A run that cannot continue the last one starts where possible in a
    /// free range with room after it for the nodes the last commit sealed
    /// (at most `SMALL_TXN_PAGES`), so that the runs that follow (a small
    /// commit's nodes) continue it.
    pub(super) fn alloc_pages(&mut self, n: u64) -> StoreResult<u64> {
        let room = self
            .w
            .last_nodes
            .iter()
            .sum::<u64>()
            .clamp(1, SMALL_TXN_PAGES);
        self.alloc_pages_with_room(n, room)
    }

    /// `alloc_pages`, where a new run should leave `room` pages free after it.
    fn alloc_pages_with_room(&mut self, n: u64, room: u64) -> StoreResult<u64> {
        let grow = self.allocated + n <= SMALL_TXN_PAGES;
        let start = match self.hint {
            Some(h) if self.w.alloc.alloc_at(h, n, grow) => h,
            _ => self.w.alloc.alloc_with_room(n, room),
        };
        self.hint = Some(start + n);
        self.allocated += n;
        let need = (start + n) * PAGE;
        let len = self.store.backend.len();
        // An ordinary commit leaves the last `reserve` bytes of the file
        // alone: it grows the file to keep them free past what it uses,
        // and fails for want of space if the disk cannot give them.
        let reserve = if self.use_reserve {
            0
        } else {
            self.store.opts.reserve
        };
        if need + reserve > len {
            let step = (len / 8).clamp(GROW_MIN, GROW_MAX);
            let target = (need + reserve).max(len + step).div_ceil(GROW_MIN) * GROW_MIN;
            let need = need + reserve;
            let target = target.min(self.store.opts.map_size).max(need);
            // SAFETY: growing only (`need > len`, and `target >= need`):
            // no borrow reaches past the current length.
            match unsafe { self.store.backend.set_len(target) } {
                // No room for the usual step ahead: take just what is needed.
                // SAFETY: as above, `need > len`.
                Err(StoreError::NoSpace | StoreError::Quota) if target > need => unsafe {
                    self.store.backend.set_len(need)?
                },
                r => r?,
            }
        }
        for p in start..start + n {
            self.store.verified.set(p, false);
        }
        Ok(start)
    }

    pub(super) fn queue_write(&mut self, off: u64, buf: Vec<u8>) -> StoreResult<()> {
        self.queued_bytes += buf.len();
        self.queue.push((off, buf));
        if self.queued_bytes >= QUEUE_BYTES {
            self.flush_queue()?;
        }
        Ok(())
    }

    pub(super) fn flush_queue(&mut self) -> StoreResult<()> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let writes: Vec<(u64, &[u8])> =
            self.queue.iter().map(|(o, b)| (*o, b.as_slice())).collect();
        // SAFETY: queued writes go to extents and overflow runs this txn
        // allocated from pages free at the last commit: nothing references
        // them, so no reader borrows them.
        let r = unsafe { self.store.backend.write_all(&writes) };
        self.queue.clear();
        self.queued_bytes = 0;
        if r.is_err() {
            self.w.poisoned = true;
            self.broken = true;
        }
        r
    }
}
