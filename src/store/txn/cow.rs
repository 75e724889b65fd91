//! Copy-on-write edits of a tree: a changed node is copied (made dirty)
//! with every node above it, then split, merged or refilled to keep every
//! node between the fill limits.

use super::*;

impl WriteTxn<'_> {
    pub(super) fn put_entry(
        &mut self,
        tree: Tree,
        key: &[u8],
        value: &[u8],
        extent: Option<Extent>,
    ) -> StoreResult<()> {
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        if value.len() > MAX_VALUE {
            return Err(StoreError::ValueTooLong {
                len: value.len(),
                max: MAX_VALUE,
            });
        }
        if let Some(x) = extent {
            let ours = self.extents_written.get(&x.page) == Some(&x)
                || self.extents_freed.get(&x.page) == Some(&x);
            if !ours {
                let current = read::get_entry(&self.src(), self.roots[tree as usize], key)?
                    .and_then(|e| e.extent);
                if current != Some(x) {
                    return Err(StoreError::ForeignExtent(x.page));
                }
            }
        }
        let val = if leaf_entry_size(key.len(), NewVal::Inline(value), extent.is_some())
            <= MAX_INLINE_ENTRY
        {
            NewVal::Inline(value)
        } else {
            let len = value.len() as u64;
            let pages = overflow_pages(len);
            let page = self.alloc_pages(pages)?;
            let mut buf = vec![0u8; (pages * PAGE) as usize];
            buf[HEADER_SIZE..HEADER_SIZE + value.len()].copy_from_slice(value);
            let run = format::seal(&mut buf, KIND_OVERFLOW, 0, page, self.txn);
            self.queue_write(page * PAGE, buf)?;
            NewVal::Overflow { run, len }
        };
        let old = self.modify(tree, key, Op::Put { val, extent })?;
        if let Some(old) = old {
            self.release_value(tree, old, extent);
        }
        if let Some(x) = extent {
            self.extents_written.remove(&x.page);
            self.extents_freed.remove(&x.page);
        }
        if tree == Tree::Data {
            self.changes += 1;
            self.bytes += value.len() as u64;
        }
        Ok(())
    }

    /// Frees what a replaced or deleted entry held, except `keep`.
    pub(super) fn release_value(&mut self, tree: Tree, old: Old, keep: Option<Extent>) {
        if let Some((run, len)) = old.overflow {
            self.release(tree, run.page, overflow_pages(len), run.birth);
        }
        if let Some(x) = old.extent
            && Some(x) != keep
        {
            self.extents_freed.insert(x.page, x);
        }
    }

    /// A run of pages the tree no longer references.
    fn release(&mut self, tree: Tree, start: u64, len: u64, birth: u64) {
        if birth >= self.txn {
            self.free_at_commit.push((start, len));
        } else if tree == Tree::Data {
            self.data_freed.push(Dead { birth, start, len });
        } else {
            self.sys_freed.push((start, len));
        }
    }

    /// A node edited in this txn and now dropped: it has no page yet.
    fn drop_dirty(&mut self, id: u64) {
        self.dirty.remove(&id);
    }

    /// The writable copy of node `id` (itself, if already edited in this txn).
    fn make_dirty(&mut self, tree: Tree, ptr: Ptr) -> StoreResult<u64> {
        if self.dirty.contains_key(&ptr.page) {
            return Ok(ptr.page);
        }
        let node = Node::from_page(self.store.pages().node(ptr)?);
        self.release(tree, ptr.page, 1, ptr.birth);
        Ok(self.new_node(node))
    }

    /// An edited node gets a stand-in id (above any page) until the commit
    /// gives every edited node its page, all in one run.
    fn new_node(&mut self, node: Node) -> u64 {
        let id = self.next_temp;
        self.next_temp += 1;
        self.dirty.insert(id, node);
        id
    }

    pub(super) fn modify(
        &mut self,
        tree: Tree,
        key: &[u8],
        op: Op<'_>,
    ) -> StoreResult<Option<Old>> {
        let t = tree as usize;
        if self.roots[t].is_none() {
            if let Op::Put { val, extent } = op {
                let mut leaf = Node::new(true);
                leaf.insert_leaf(0, key, val, extent);
                let page = self.new_node(leaf);
                self.roots[t] = self.fresh(page);
            }
            return Ok(None);
        }
        let (page, out, old) = self.modify_rec(tree, self.roots[t], key, op, 0)?;
        let mut root = self.fresh(page);
        if let Outcome::Split(list) = out {
            root = self.grow_root(root, list)?;
        }
        // A root branch with one child gives way to the child; an empty root
        // leaf leaves an empty tree.
        loop {
            match self.dirty.get(&root.page) {
                Some(n) if !n.is_leaf() && n.len() == 1 => {
                    let child = n.child(0);
                    self.drop_dirty(root.page);
                    root = child;
                }
                Some(n) if n.is_leaf() && n.len() == 0 => {
                    self.drop_dirty(root.page);
                    root = Ptr::NONE;
                    break;
                }
                _ => break,
            }
        }
        self.roots[t] = root;
        Ok(old)
    }

    /// A reference to a node edited in this txn; its checksum is filled in
    /// when the node is sealed at commit.
    fn fresh(&self, page: u64) -> Ptr {
        Ptr {
            page,
            birth: self.txn,
            sum: 0,
        }
    }

    fn grow_root(&mut self, left: Ptr, list: Vec<(Box<[u8]>, u64)>) -> StoreResult<Ptr> {
        let mut node = Node::new(false);
        node.insert_branch(0, b"", left);
        for (i, (key, page)) in list.into_iter().enumerate() {
            node.insert_branch(i + 1, &key, self.fresh(page));
        }
        let root = self.new_node(node);
        match self.check_size(root)? {
            Outcome::Split(more) => self.grow_root(self.fresh(root), more),
            _ => Ok(self.fresh(root)),
        }
    }

    fn modify_rec(
        &mut self,
        tree: Tree,
        ptr: Ptr,
        key: &[u8],
        op: Op<'_>,
        depth: usize,
    ) -> StoreResult<(u64, Outcome, Option<Old>)> {
        if depth > 32 {
            return Err(StoreError::corrupt(
                ptr.page,
                "tree deeper than any real tree",
            ));
        }
        let id = self.make_dirty(tree, ptr)?;
        let node = self.dirty.get_mut(&id).expect("make_dirty stores the node");
        let old = if node.is_leaf() {
            let pos = node.search(key);
            let old = pos.ok().map(|i| {
                let e = node.entry(i);
                Old {
                    overflow: match e.val {
                        ValRef::Overflow { run, len } => Some((run, len)),
                        ValRef::Inline(_) => None,
                    },
                    extent: e.extent,
                }
            });
            match (op, pos) {
                (Op::Put { val, extent }, Ok(i)) => node.replace_leaf(i, key, val, extent),
                (Op::Put { val, extent }, Err(i)) => node.insert_leaf(i, key, val, extent),
                (Op::Delete, Ok(i)) => node.remove(i),
                (Op::Delete, Err(_)) => {}
            }
            old
        } else {
            let i = node.child_index(key);
            let child = node.child(i);
            let (nc, out, old) = self.modify_rec(tree, child, key, op, depth + 1)?;
            self.after_child(tree, id, i, nc, out)?;
            old
        };
        let out = self.check_size(id)?;
        Ok((id, out, old))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.dirty.get_mut(&id).expect("an edited node")
    }

    fn after_child(
        &mut self,
        tree: Tree,
        parent: u64,
        i: usize,
        child: u64,
        out: Outcome,
    ) -> StoreResult<()> {
        let child = self.fresh(child);
        let fresh: Vec<(Box<[u8]>, Ptr)> = match &out {
            Outcome::Split(list) => list
                .iter()
                .map(|(key, page)| (key.clone(), self.fresh(*page)))
                .collect(),
            _ => Vec::new(),
        };
        let node = self.node_mut(parent);
        node.set_child(i, child);
        for (j, (key, ptr)) in fresh.into_iter().enumerate() {
            node.insert_branch(i + 1 + j, &key, ptr);
        }
        match out {
            Outcome::Underfull => self.rebalance(tree, parent, i),
            _ => Ok(()),
        }
    }

    /// Child `i` of `parent` is under-full: merge it with a sibling, or even
    /// out the two.
    fn rebalance(&mut self, tree: Tree, parent: u64, i: usize) -> StoreResult<()> {
        if self.node_mut(parent).len() < 2 {
            return Ok(());
        }
        let (l, r) = if i > 0 { (i - 1, i) } else { (0, 1) };
        // For the error below: edited nodes have stand-in ids.
        let right_page = self.node_mut(parent).child(r).page;
        for j in [l, r] {
            let c = self.node_mut(parent).child(j);
            let nc = self.make_dirty(tree, c)?;
            let fresh = self.fresh(nc);
            self.node_mut(parent).set_child(j, fresh);
        }
        let (lid, rid, sep) = {
            let p = self.node_mut(parent);
            (p.child(l).page, p.child(r).page, p.key(r).to_vec())
        };
        let mut left = self.dirty.remove(&lid).expect("dirty left");
        let mut right = self.dirty.remove(&rid).expect("dirty right");
        if left.is_leaf() != right.is_leaf() {
            self.dirty.insert(lid, left);
            self.dirty.insert(rid, right);
            return Err(StoreError::corrupt(
                right_page,
                "siblings of different kinds",
            ));
        }
        if !right.is_leaf() {
            // The right node's first key stands for the separator above it.
            right.set_key(0, &sep);
        }
        left.extend(&right);
        if left.size() <= CAPACITY {
            self.dirty.insert(lid, left);
            self.node_mut(parent).remove(r);
            return Ok(());
        }
        let k = balance_point(&left);
        let mut right = left.split_off(k);
        let new_sep = right.key(0).to_vec();
        if !right.is_leaf() {
            right.set_key(0, b"");
        }
        self.dirty.insert(lid, left);
        self.dirty.insert(rid, right);
        self.node_mut(parent).set_key(r, &new_sep);
        Ok(())
    }

    /// Splits an overfull node, or reports it under-full.
    fn check_size(&mut self, id: u64) -> StoreResult<Outcome> {
        let size = self.dirty[&id].size();
        if size < UNDERFULL {
            return Ok(Outcome::Underfull);
        }
        if size <= CAPACITY {
            return Ok(Outcome::Done);
        }
        let node = self.dirty.remove(&id).expect("dirty node");
        let mut pieces = split_to_fit(node);
        let (_, first) = pieces.remove(0);
        self.dirty.insert(id, first);
        let mut out = Vec::with_capacity(pieces.len());
        for (sep, node) in pieces {
            out.push((sep, self.new_node(node)));
        }
        Ok(Outcome::Split(out))
    }
}

/// The index that splits a node's entries into two halves of about equal
/// bytes, each non-empty.
fn balance_point(node: &Node) -> usize {
    let n = node.len();
    let total = node.size();
    let mut acc = 0;
    for i in 0..n {
        let s = node.entry_size(i);
        if acc + s / 2 >= total / 2 {
            return i.clamp(1, n - 1);
        }
        acc += s;
    }
    n - 1
}

/// Splits a node into pieces that each fit a page; every piece after the
/// first comes with its separator key.
fn split_to_fit(node: Node) -> Vec<(Box<[u8]>, Node)> {
    let mut out = vec![(Box::<[u8]>::default(), node)];
    let mut i = 0;
    while i < out.len() {
        if out[i].1.size() <= CAPACITY || out[i].1.len() < 2 {
            i += 1;
            continue;
        }
        let k = balance_point(&out[i].1);
        let mut right = out[i].1.split_off(k);
        let sep: Box<[u8]> = right.key(0).into();
        if !right.is_leaf() {
            right.set_key(0, b"");
        }
        out.insert(i + 1, (sep, right));
    }
    out
}
