//! A volume's tree as sync sees it: files named by stable file id, never
//! by local inode number, and the changes between two trees as a
//! change-set.
//!
//! A peer keeps two of these: the *synced* tree (the server's log applied
//! up to the last sequence it received) and its *local* tree (what its
//! mount shows: the synced tree plus its own changes not yet in the log).
//! What a peer pushes is the difference of the two ([`diff`]); what it
//! receives is applied to the synced tree by the one pure function in
//! `apply.rs`, and rebased into the local tree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::fs::{Kind, Time};

mod blocks;
mod layer;
mod stored;

pub use blocks::{Blocks, Names};
pub use layer::Layered;
pub use stored::{TREE_DIR, TreeStore};

/// A file's identity on every peer of a volume (the inode record's file id).
pub type FileId = u128;
/// The root directory's id on every peer.
pub const ROOT_ID: FileId = 1;
/// A block's BLAKE3 hash: blocks travel and are kept by it.
pub type Hash = [u8; 32];
/// A name: the directory it is in and the name in it.
pub type Key = (FileId, Vec<u8>);
/// A peer of a volume, as the server numbers it.
pub type PeerId = u32;

/// What a file is, apart from its data, names and xattrs. Ownership
/// travels as numeric ids (as rsync does with `--numeric-ids`); the
/// change time and the access time are each peer's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub mtime: Time,
}

/// The last change to one aspect of a file: the log sequence and the peer
/// it came from. What decides whether a change made elsewhere, on an
/// older base, is concurrent with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub origin: PeerId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    /// Block index → hash; a missing index is a hole.
    pub blocks: Blocks,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A symlink's target (empty for anything else).
    pub target: Vec<u8>,
    /// The last change to the content: meta, blocks, xattrs, target.
    pub changed: Stamp,
    /// The last change to the names.
    pub renamed: Stamp,
}

impl Node {
    /// The same file content: everything but the stamps.
    pub fn same_content(&self, other: &Node) -> bool {
        self.meta == other.meta
            && self.blocks == other.blocks
            && self.xattrs == other.xattrs
            && self.target == other.target
    }
}

/// Files, and the names they go by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// A peer's local tree is its synced tree but for what it has not
    /// pushed: the two are layered over one base ([`Tree::fold`]), and a
    /// node changed in one is shared with the other while the content is
    /// the same (`Arc`, copied by the tree that changes it).
    pub nodes: Layered<FileId, Arc<Node>>,
    pub entries: Layered<Key, FileId>,
    /// Every file's names (the inverse of `entries`); a directory has one.
    pub names: Layered<FileId, Names>,
    /// While recording ([`Tree::record`]): each file as it was before it
    /// was first changed. Not part of what the tree is (equality ignores it).
    pub journal: Journal,
}

/// A file's node (if it had one) and names, before a change.
type Before = (Option<Arc<Node>>, Names);

/// See [`Tree::journal`].
#[derive(Clone, Default)]
pub struct Journal(Option<BTreeMap<FileId, Before>>);

impl PartialEq for Journal {
    fn eq(&self, _: &Journal) -> bool {
        true
    }
}

impl Eq for Journal {}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(j) => write!(f, "Journal({} files)", j.len()),
            None => f.write_str("Journal(off)"),
        }
    }
}

impl Default for Tree {
    fn default() -> Tree {
        Tree::new(Meta {
            kind: Kind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            mtime: Time::default(),
        })
    }
}

impl Tree {
    /// A tree holding only the root, with `root`'s attributes.
    pub fn new(root: Meta) -> Tree {
        let node = Node {
            meta: root,
            blocks: Blocks::default(),
            xattrs: BTreeMap::new(),
            target: Vec::new(),
            changed: Stamp::default(),
            renamed: Stamp::default(),
        };
        Tree {
            nodes: [(ROOT_ID, Arc::new(node))].into_iter().collect(),
            entries: Layered::default(),
            names: Layered::default(),
            journal: Journal::default(),
        }
    }

    /// A tree with nothing in it, not even the root (for parts of trees).
    pub fn empty() -> Tree {
        Tree {
            nodes: Layered::default(),
            entries: Layered::default(),
            names: Layered::default(),
            journal: Journal::default(),
        }
    }

    /// Starts recording each file as it was before it changes, so that the
    /// changes can be undone ([`Tree::undo`]) without a copy of the whole
    /// tree; a change touches the files it names, a copy touches them all.
    pub fn record(&mut self) {
        self.journal.0 = Some(BTreeMap::new());
    }

    /// Stops recording and keeps the changes.
    pub fn keep(&mut self) {
        self.journal.0 = None;
    }

    /// `fid` is about to change: while recording, keep it as it is now
    /// unless it changed before. Every change of a node or of a name goes
    /// through here while recording (the methods below call it; `nodes` is
    /// changed directly only where nothing records, a tree read or built,
    /// or right after a `touch`, as `Peer::share` does).
    pub fn touch(&mut self, fid: FileId) {
        if let Some(j) = &mut self.journal.0
            && !j.contains_key(&fid)
        {
            let was = (
                self.nodes.get(&fid),
                self.names.get(&fid).unwrap_or_default(),
            );
            j.insert(fid, was);
        }
    }

    /// The node of `fid` to change (recorded first).
    pub fn node_mut(&mut self, fid: FileId) -> Option<&mut Node> {
        self.touch(fid);
        self.nodes.get_mut(&fid).map(Arc::make_mut)
    }

    /// Puts `node` as `fid`'s node (recorded first).
    pub fn put_node(&mut self, fid: FileId, node: impl Into<Arc<Node>>) {
        self.touch(fid);
        self.nodes.insert(fid, node.into());
    }

    /// Undoes every change since [`Tree::record`], and stops recording.
    pub fn undo(&mut self) {
        let Some(j) = self.journal.0.take() else {
            return;
        };
        for fid in j.keys() {
            for k in self.names.remove(fid).unwrap_or_default() {
                if self.entries.get(&k) == Some(*fid) {
                    self.entries.remove(&k);
                }
            }
            self.nodes.remove(fid);
        }
        for (fid, (node, keys)) in j {
            if let Some(n) = node {
                self.nodes.insert(fid, n);
            }
            for k in keys {
                self.link(k, fid);
            }
        }
    }

    /// These files as they were when recording began (as they are, for
    /// those not changed since): the `from` of a [`diff`] over them.
    pub fn before(&self, fids: &BTreeSet<FileId>) -> Tree {
        let mut t = Tree::empty();
        for &fid in fids {
            match self.journal.0.as_ref().and_then(|j| j.get(&fid)) {
                Some((node, keys)) => {
                    if let Some(n) = node {
                        t.nodes.insert(fid, n.clone());
                    }
                    for k in keys {
                        t.link(k.clone(), fid);
                    }
                }
                None => t.copy_from(self, [fid]),
            }
        }
        t
    }

    /// Copies these files of `from` (their nodes and names) into this tree.
    pub fn copy_from(&mut self, from: &Tree, fids: impl IntoIterator<Item = FileId>) {
        for fid in fids {
            if let Some(n) = from.nodes.get(&fid) {
                self.nodes.insert(fid, n);
            }
            let keys: Vec<Key> = from.names_of(fid).collect();
            for k in keys {
                self.link(k, fid);
            }
        }
    }

    /// Moves this tree's changes into its base: a tree built by inserts
    /// (read, decoded) becomes one that trees cloned from it share.
    pub fn freeze(&mut self) {
        self.nodes.freeze();
        self.entries.freeze();
        self.names.freeze();
    }

    /// Folds `first`'s changes into the base it shares with `second`,
    /// which keeps what it changed itself (see [`layer::fold`]): what a
    /// peer's synced tree applied becomes shared with its local tree.
    pub fn fold(first: &mut Tree, second: &mut Tree) {
        layer::fold(&mut first.nodes, &mut second.nodes);
        layer::fold(&mut first.entries, &mut second.entries);
        layer::fold(&mut first.names, &mut second.names);
    }

    /// A tree equal to this one, layered over `like`'s base (see
    /// [`Layered::rebased_onto`]): a tree read whole holds only what
    /// differs from the tree it was read like.
    pub fn rebased_onto(&self, like: &Tree) -> Tree {
        Tree {
            nodes: self.nodes.rebased_onto(&like.nodes),
            entries: self.entries.rebased_onto(&like.entries),
            names: self.names.rebased_onto(&like.names),
            journal: self.journal.clone(),
        }
    }

    /// Whether some of this tree's changes are out of memory
    /// ([`TreeStore::spill`]).
    pub fn is_spilled(&self) -> bool {
        self.nodes.is_spilled() || self.entries.is_spilled() || self.names.is_spilled()
    }

    /// The files whose node or names changed in a spill, in order, once
    /// (a changed entry changed the names of the files it names).
    pub fn spilled_files(&self) -> impl Iterator<Item = FileId> + '_ {
        union(self.nodes.spilled_keys(), self.names.spilled_keys())
    }

    /// Whether a spill holds a change of `fid`'s node or names.
    pub fn is_spilled_file(&self, fid: FileId) -> bool {
        self.nodes.mid_has(&fid) || self.names.mid_has(&fid)
    }

    /// Whether changes are being recorded ([`Tree::record`]).
    pub fn is_recording(&self) -> bool {
        self.journal.0.is_some()
    }

    /// How many files, names and entries this tree holds changed in
    /// memory (since its last fold, or spill).
    pub fn changes(&self) -> usize {
        self.nodes.changes() + self.entries.changes() + self.names.changes()
    }

    pub fn is_dir(&self, fid: FileId) -> bool {
        self.nodes
            .get(&fid)
            .is_some_and(|n| n.meta.kind == Kind::Dir)
    }

    /// The hash of block `idx` of file `fid`, if the file has that block.
    pub fn block(&self, fid: FileId, idx: u64) -> Option<Hash> {
        self.nodes.get(&fid)?.blocks.get(&idx).copied()
    }

    pub fn names_of(&self, fid: FileId) -> impl Iterator<Item = Key> + use<> {
        self.names.get(&fid).into_iter().flatten()
    }

    /// The entries of directory `dir`.
    pub fn children(&self, dir: FileId) -> impl Iterator<Item = (Key, FileId)> + '_ {
        self.entries
            .range((dir, Vec::new())..)
            .take_while(move |((p, _), _)| *p == dir)
    }

    pub fn link(&mut self, key: Key, fid: FileId) {
        self.touch(fid);
        if let Some(was) = self.entries.get(&key) {
            self.touch(was);
        }
        self.names.get_or_default(&fid).insert(key.clone());
        self.entries.insert(key, fid);
    }

    pub fn unlink(&mut self, key: &Key) -> Option<FileId> {
        let fid = self.entries.get(key)?;
        self.touch(fid);
        self.entries.remove(key);
        if let Some(set) = self.names.get_mut(&fid) {
            set.remove(key);
            if set.is_empty() {
                self.names.remove(&fid);
            }
        }
        Some(fid)
    }

    /// Whether `ancestor` is `dir` or one of the directories above it.
    /// Directories have one name, so this walks up one path.
    pub fn is_within(&self, dir: FileId, ancestor: FileId) -> bool {
        let mut at = dir;
        // Bounded: a tree has no more levels than it has directories.
        for _ in 0..=self.nodes.len() {
            if at == ancestor {
                return true;
            }
            match self.names_of(at).next() {
                Some((parent, _)) => at = parent,
                None => return false,
            }
        }
        false
    }

    /// Drops a file with all its names and content.
    pub fn remove_file(&mut self, fid: FileId) -> Option<Arc<Node>> {
        self.touch(fid);
        let keys: Vec<Key> = self.names_of(fid).collect();
        for k in &keys {
            self.entries.remove(k);
        }
        self.names.remove(&fid);
        self.nodes.remove(&fid)
    }

    /// The same files, names and contents as `other` (stamps aside).
    pub fn same_as(&self, other: &Tree) -> bool {
        self.entries == other.entries
            && self.nodes.len() == other.nodes.len()
            && self
                .nodes
                .iter()
                .all(|(fid, n)| other.nodes.get(&fid).is_some_and(|o| n.same_content(&o)))
    }
}

/// Two ascending sequences as one, each item once.
pub fn union<T: Ord>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = T>,
) -> impl Iterator<Item = T> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x == y => {
            b.next();
            a.next()
        }
        (Some(x), Some(y)) if x < y => a.next(),
        (Some(_), None) => a.next(),
        _ => b.next(),
    })
}

/// One change in a change-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A file's content as changed. `whole`: the op carries all of it (a
    /// file new to the volume), else it changes the file as the log has it.
    Node {
        fid: FileId,
        whole: bool,
        meta: Meta,
        /// Blocks at or past this index are gone (the file shrank).
        cut: Option<u64>,
        /// Blocks set (`Some`) or made holes (`None`).
        blocks: Vec<(u64, Option<Hash>)>,
        xattrs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        target: Option<Vec<u8>>,
    },
    /// A file's names as changed: a rename removes one and adds one, a
    /// link adds, an unlink removes, a delete removes the last.
    Names {
        fid: FileId,
        removed: Vec<Key>,
        added: Vec<Key>,
    },
}

impl Op {
    pub fn fid(&self) -> FileId {
        match self {
            Op::Node { fid, .. } | Op::Names { fid, .. } => *fid,
        }
    }
}

/// What one commit of one peer changed, as the server orders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    /// The peer it came from (set by the server from the connection's
    /// credential, never taken from the peer).
    pub origin: PeerId,
    /// That peer's name, for the names of conflict copies.
    pub origin_name: String,
    /// The peer's own count of its pushes: the server takes each once,
    /// in order, and ignores one at or below the last it took.
    pub counter: u64,
    /// The last log sequence the peer had applied when it made this.
    pub base: u64,
    /// When the server took it (Unix seconds), for conflict names.
    pub time: i64,
    pub ops: Vec<Op>,
}

/// The change-set that turns `from` into `to`, for the files in `fids`
/// (every file of both when `None`): content ops first, then names.
pub fn diff(from: &Tree, to: &Tree, fids: Option<&BTreeSet<FileId>>) -> Vec<Op> {
    let all: BTreeSet<FileId>;
    let fids = match fids {
        Some(f) => f,
        None => {
            all = from.nodes.keys().chain(to.nodes.keys()).collect();
            &all
        }
    };
    let mut ops = Vec::new();
    let mut names = Vec::new();
    for &fid in fids {
        let (content, renamed) = diff_one(from, to, fid);
        ops.extend(content);
        names.extend(renamed);
    }
    ops.extend(names);
    ops
}

/// What turns file `fid` of `from` into that of `to`: the op of its
/// content, and the op of its names, each if it changed.
pub fn diff_one(from: &Tree, to: &Tree, fid: FileId) -> (Option<Op>, Option<Op>) {
    // Over one base, neither changed: nothing to read (a stored base would
    // decode the file twice to find them equal).
    if from.nodes.same_at(&to.nodes, &fid) && from.names.same_at(&to.names, &fid) {
        return (None, None);
    }
    let old_node = from.nodes.get(&fid);
    let new_node = to.nodes.get(&fid);
    if fid == ROOT_ID && old_node == new_node {
        return (None, None);
    }
    let content = match (old_node, new_node) {
        (None, Some(new)) => Some(whole(fid, &new)),
        // One node shared by both trees is the same content, uncompared.
        (Some(old), Some(new)) if !Arc::ptr_eq(&old, &new) && !old.same_content(&new) => {
            Some(delta(fid, &old, &new))
        }
        _ => None,
    };
    let old: BTreeSet<Key> = from.names_of(fid).collect();
    let new: BTreeSet<Key> = to.names_of(fid).collect();
    let names = (old != new).then(|| Op::Names {
        fid,
        removed: old.difference(&new).cloned().collect(),
        added: new.difference(&old).cloned().collect(),
    });
    (content, names)
}

/// The op that makes file `fid` as `n` is, whole.
pub(super) fn whole(fid: FileId, n: &Node) -> Op {
    Op::Node {
        fid,
        whole: true,
        meta: n.meta.clone(),
        cut: None,
        blocks: n.blocks.iter().map(|(i, h)| (*i, Some(*h))).collect(),
        xattrs: n
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        target: Some(n.target.clone()),
    }
}

fn delta(fid: FileId, old: &Node, new: &Node) -> Op {
    // Blocks past the new last one go with one cut, not one hole each.
    let end = new.blocks.keys().next_back().map_or(0, |i| i + 1);
    let cut = old.blocks.range(end..).next().map(|_| end);
    // Both lists are in index order: one walk over the two (over the
    // chunks they do not share), not a search per block.
    let blocks = blocks::changes(&old.blocks, &new.blocks, end);
    let mut xattrs = Vec::new();
    for (k, v) in &new.xattrs {
        if old.xattrs.get(k) != Some(v) {
            xattrs.push((k.clone(), Some(v.clone())));
        }
    }
    for k in old.xattrs.keys() {
        if !new.xattrs.contains_key(k) {
            xattrs.push((k.clone(), None));
        }
    }
    Op::Node {
        fid,
        whole: false,
        meta: new.meta.clone(),
        cut,
        blocks,
        xattrs,
        target: (old.target != new.target).then(|| new.target.clone()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn h(b: u8) -> Hash {
        [b; 32]
    }

    /// The content op from `o` to `n`, if their content differs.
    fn delta_of(o: &Node, n: &Node) -> Option<Op> {
        let (mut from, mut to) = (Tree::empty(), Tree::empty());
        from.put_node(10, o.clone());
        to.put_node(10, n.clone());
        diff_one(&from, &to, 10).0
    }

    proptest! {
        /// The op between two versions of a file, its cut and its block
        /// changes applied to the first, gives the second's blocks.
        #[test]
        fn a_delta_makes_the_old_blocks_the_new_ones(
            old in proptest::collection::vec((0u64..64, any::<u8>()), 0..40),
            new in proptest::collection::vec((0u64..64, any::<u8>()), 0..40),
        ) {
            let node = |b: &[(u64, u8)]| {
                let mut n = Node::clone(&Tree::default().nodes.get(&ROOT_ID).expect("a root"));
                n.meta.kind = Kind::File;
                n.blocks = b.iter().map(|&(i, x)| (i, h(x))).collect();
                n
            };
            let (o, n) = (node(&old), node(&new));
            let mut blocks = o.blocks.clone();
            if let Some(Op::Node { cut, blocks: changes, .. }) = delta_of(&o, &n) {
                if let Some(c) = cut {
                    blocks.split_off(&c);
                }
                blocks.set_many(&changes);
            }
            prop_assert_eq!(blocks, n.blocks);
        }
    }
}
