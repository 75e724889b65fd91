//! What goes in one push: a peer's pending change cut into change-sets of
//! at most so many operations and blocks, each whole in itself.

use std::collections::{BTreeMap, BTreeSet};

use super::Peer;
use crate::sync::tree::{ChangeSet, FileId, Op, diff_one, union};

impl Peer {
    /// [`Peer::push`] with these limits. A change bigger than them goes in
    /// several change-sets, one after the other; each is whole in itself
    /// (see [`Peer::part`]), so peers and the server apply each alone.
    pub fn push_at_most(&mut self, max_ops: usize, max_blocks: usize) -> Option<ChangeSet> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut candidates = match self.candidates.take() {
            Some(c) => c,
            None => (self.synced.nodes.keys())
                .chain(self.local.nodes.keys())
                .collect(),
        };
        let (ops, looked_at) = self.part(&candidates, max_ops, max_blocks);
        // What was looked at is in this push or has nothing to push; the
        // rest waits for the next one.
        for f in &looked_at {
            candidates.remove(f);
        }
        self.candidates = Some(candidates);
        if ops.is_empty() {
            // The walk went through every candidate and spilled change.
            self.spill_idle = true;
            return None;
        }
        self.counter += 1;
        let cs = ChangeSet {
            origin: self.id,
            origin_name: self.name.clone(),
            counter: self.counter,
            base: self.applied,
            time: 0,
            ops,
        };
        self.in_flight = Some(cs.clone());
        Some(cs)
    }

    /// The ops of the first part of what changed in `candidates` (content
    /// ops first, then names), the files taken in order until the next
    /// would pass the limits, and every file looked at. A file is taken
    /// with what its change needs to mean the same alone: the directories
    /// its new names are in if they changed too, whatever stood in those
    /// names before, and the former children of a directory it removes.
    /// Without them a peer would see a name taken twice, or a file put in
    /// a directory that does not exist yet, and make a conflict of what is
    /// one change.
    ///
    /// Files are compared as the walk reaches them: a backlog of many
    /// thousand changed files (an untar faster than the server) costs each
    /// push what that push carries, not the whole backlog again.
    fn part(
        &self,
        candidates: &BTreeSet<FileId>,
        max_ops: usize,
        max_blocks: usize,
    ) -> (Vec<Op>, BTreeSet<FileId>) {
        type Change = (Option<Op>, Option<Op>);
        let mut seen: BTreeMap<FileId, Change> = BTreeMap::new();
        let mut changed = |f: FileId| -> Option<(usize, usize)> {
            let (content, names) = seen
                .entry(f)
                .or_insert_with(|| diff_one(&self.synced, &self.local, f));
            let blocks = match content {
                Some(Op::Node { blocks, .. }) => blocks.len(),
                _ => 0,
            };
            let n = usize::from(content.is_some()) + usize::from(names.is_some());
            (n > 0).then_some((n, blocks))
        };
        let mut part = BTreeSet::new();
        let (mut n, mut b) = (0, 0);
        // The files whose changes were spilled are candidates too, unless
        // the last walk found nothing to push among them (what changed
        // since is marked).
        let spilled = self.local.is_spilled() && !self.spill_idle;
        let is_candidate =
            |f: FileId| candidates.contains(&f) || (spilled && self.local.is_spilled_file(f));
        let spilled_files = spilled
            .then(|| self.local.spilled_files())
            .into_iter()
            .flatten();
        for fid in union(candidates.iter().copied(), spilled_files) {
            if part.contains(&fid) {
                continue;
            }
            let mut with = BTreeSet::new();
            let (mut dn, mut db) = (0, 0);
            let mut todo = vec![fid];
            while let Some(f) = todo.pop() {
                if part.contains(&f) || with.contains(&f) || !is_candidate(f) {
                    continue;
                }
                let Some((fn_, fb)) = changed(f) else {
                    continue;
                };
                with.insert(f);
                dn += fn_;
                db += fb;
                for k in self.local.names_of(f) {
                    if !self.synced.names_of(f).any(|o| o == k) {
                        todo.push(k.0);
                        todo.extend(self.synced.entries.get(&k));
                    }
                }
                if !self.local.nodes.contains_key(&f) || self.local.names_of(f).next().is_none() {
                    todo.extend(self.synced.children(f).map(|(_, c)| c));
                }
            }
            if !part.is_empty() && (n + dn > max_ops || b + db > max_blocks) {
                break;
            }
            n += dn;
            b += db;
            part.extend(with);
        }
        let mut ops = Vec::with_capacity(n);
        let mut names = Vec::new();
        let mut looked_at = BTreeSet::new();
        for (f, (content, renamed)) in seen {
            if part.contains(&f) {
                ops.extend(content);
                names.extend(renamed);
                looked_at.insert(f);
            } else if content.is_none() && renamed.is_none() {
                looked_at.insert(f);
            }
        }
        ops.extend(names);
        (ops, looked_at)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::file;
    use crate::fs::Kind;
    use crate::sync::tree::{Op, ROOT_ID, Tree, TreeStore, diff};

    use super::*;

    /// A backlog whose changes were spilled into the tree store (and
    /// more made since, in memory) goes in parts that make the whole
    /// change, and leaves the store as folds find the synced tree caught
    /// up: nothing is pushed twice, nothing waits at the end.
    #[test]
    fn a_spilled_backlog_goes_in_parts_and_leaves_the_tree_store_once_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let trees = TreeStore::open(dir.path()).unwrap();
        let mut p = Peer::new(2, "p2", Tree::default());
        p.folds_in_store();
        let v = trees.fold(&mut p.synced, &mut p.local, 0, "saved").unwrap();
        trees.set_named(v);
        let empty = p.synced.clone();
        p.mark_read(BTreeSet::new());
        let mut d = file(&[]);
        d.meta.kind = Kind::Dir;
        p.local.put_node(9000, d);
        p.local.link((ROOT_ID, b"d".to_vec()), 9000);
        for f in 10..210u128 {
            p.local.put_node(f, file(&[(0, f as u8)]));
            p.local.link((9000, f.to_string().into_bytes()), f);
        }
        let went = trees.spill(&mut p.local).unwrap();
        p.spilled(&went);
        assert_eq!(p.local.changes(), 0, "all of it spilled");
        assert!(p.local.is_spilled() && p.has_waiting());
        // More since, in memory, and a spilled file changed again.
        for f in 500..520u128 {
            p.local.put_node(f, file(&[(0, 1)]));
            p.local.link((ROOT_ID, f.to_string().into_bytes()), f);
            p.mark([f]);
        }
        p.local.put_node(10, file(&[(0, 99)]));
        p.mark([10]);
        let whole = diff(&empty, &p.local, None).len();
        let (mut pushes, mut carried) = (0, 0);
        while let Some(cs) = p.push_at_most(40, 64) {
            pushes += 1;
            assert!(pushes < 1000, "the backlog does not shrink");
            carried += cs.ops.len();
            p.on_ack(p.applied + 1, cs.counter, 0).unwrap();
            if pushes % 3 == 0 {
                let v = trees
                    .fold(&mut p.synced, &mut p.local, trees.named(), "t")
                    .unwrap();
                trees.set_named(v);
            }
        }
        assert_eq!(carried, whole, "every op once");
        assert!(p.synced.same_as(&p.local), "the parts make the whole");
        assert!(!p.has_waiting(), "something waits");
        let v = trees
            .fold(&mut p.synced, &mut p.local, trees.named(), "t")
            .unwrap();
        trees.set_named(v);
        assert!(
            !p.local.is_spilled(),
            "spilled changes left: {:?}",
            p.local.spilled_files().collect::<Vec<_>>()
        );
        assert!(p.synced.same_as(&p.local));
        assert!(trees.damage().is_none());
    }

    #[test]
    fn a_backlog_of_changes_goes_in_parts_that_together_are_the_whole_change() {
        let empty = Tree::default();
        let mut p = Peer::new(2, "p2", empty.clone());
        for f in 10..310u128 {
            p.local.put_node(f, file(&[(0, f as u8)]));
            p.local.link((ROOT_ID, f.to_string().into_bytes()), f);
        }
        // A new directory, and files new in it: a part must not carry a
        // file before the directory it is in (whose id is past theirs, so
        // the walk meets the files first).
        let mut d = file(&[]);
        d.meta.kind = Kind::Dir;
        p.local.put_node(7000, d);
        p.local.link((ROOT_ID, b"d".to_vec()), 7000);
        for f in 6000..6005u128 {
            p.local.put_node(f, file(&[(0, 1), (1, 2)]));
            p.local.link((7000, f.to_string().into_bytes()), f);
        }
        let whole = diff(&empty, &p.local, None).len();
        let (mut pushes, mut carried) = (0, 0);
        while let Some(cs) = p.push_at_most(6, 64) {
            pushes += 1;
            assert!(pushes < 1000, "the backlog does not shrink");
            assert!(cs.ops.len() <= 6, "a part of {} ops", cs.ops.len());
            for op in &cs.ops {
                if let Op::Names { added, .. } = op {
                    for (dir, _) in added {
                        assert!(
                            p.synced.nodes.contains_key(dir)
                                || cs.ops.iter().any(|o| o.fid() == *dir),
                            "a name in directory {dir} before the directory"
                        );
                    }
                }
            }
            carried += cs.ops.len();
            p.on_ack(p.applied + 1, cs.counter, 0).unwrap();
        }
        assert_eq!(carried, whole, "every op once");
        assert!(pushes >= whole.div_ceil(6), "{pushes} pushes");
        assert!(p.synced.same_as(&p.local), "the parts make the whole");
    }
}
