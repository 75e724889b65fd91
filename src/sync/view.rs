//! The local tree of a syncing mount, kept up to the last commit by
//! reading only what each commit changed: the commit hook feeds
//! [`Touched`], [`LocalView::refresh`] folds what `Fs::committed_part`
//! read of it into the tree, and keeps which inode is which file (where
//! each block is, the store's block index says: `fs::blockindex`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use super::tree::{Blocks, FileId, Node, Tree};
use crate::fs::BlocksChanged;
use crate::fs::remote::FileState;

/// What the commits since the last read changed (fed by the commit hook),
/// bounded: past `TOUCHED_MAX` the next read is whole.
#[derive(Default)]
pub struct Touched {
    pub(super) inodes: HashSet<u64>,
    pub(super) entries: HashSet<(u64, Vec<u8>)>,
    /// Which blocks of which of `inodes` changed (`Changed::data`), where
    /// every commit said so and they are few: those inodes are read in
    /// part. The others are read whole.
    pub(super) blocks: HashMap<u64, BlocksChanged>,
    /// Block indices in `blocks`.
    pub(super) listed: usize,
    pub(super) overflow: bool,
    /// The last commit added: its changes, and every earlier one's, are
    /// here or were read (its version may be visible before the hook
    /// adds it, so "nothing new" is judged by this, not by the store).
    pub(super) through: u64,
    /// The last commit added that was made here (not a change applied
    /// from elsewhere): while these keep coming the mount is busy.
    pub(super) own_through: u64,
}

/// Past it (inodes and entries, or block indices listed), reading what
/// changed one inode and entry at a time would hold them all at once (a
/// backlog made offline): the whole read holds what it reads a file at a
/// time, and spills what differs as it goes.
const TOUCHED_MAX: usize = 1 << 16;
/// The most changed blocks of one file read in part; past it the file is
/// read whole (a range read of its blocks costs less than so many lookups).
const PART_BLOCKS_MAX: usize = 4096;

impl Touched {
    pub(super) fn add(&mut self, c: &crate::fs::Changed) {
        self.through = self.through.max(c.version);
        if c.own {
            self.own_through = self.own_through.max(c.version);
        }
        if self.overflow {
            return;
        }
        for &ino in &c.inodes {
            let first = self.inodes.insert(ino);
            match (first, c.data.get(&ino), self.blocks.get_mut(&ino)) {
                (true, Some(d), _) => {
                    self.listed += d.blocks.len();
                    self.blocks.insert(ino, d.clone());
                }
                (false, Some(d), Some(had)) => {
                    let before = had.blocks.len();
                    had.then(d);
                    if had.blocks.len() > PART_BLOCKS_MAX {
                        // A stream of writes to the same blocks.
                        had.blocks.sort_unstable();
                        had.blocks.dedup();
                    }
                    self.listed = self.listed + had.blocks.len() - before;
                }
                (false, None, Some(_)) => {
                    // Gone since: read whole (it may be a new file).
                    if let Some(had) = self.blocks.remove(&ino) {
                        self.listed -= had.blocks.len();
                    }
                }
                _ => {}
            }
            if self
                .blocks
                .get(&ino)
                .is_some_and(|b| b.blocks.len() > PART_BLOCKS_MAX)
                && let Some(had) = self.blocks.remove(&ino)
            {
                self.listed -= had.blocks.len();
            }
        }
        self.entries.extend(c.entries.iter().cloned());
        if self.listed > TOUCHED_MAX {
            self.blocks = HashMap::new();
            self.listed = 0;
        }
        if self.inodes.len() + self.entries.len() > TOUCHED_MAX {
            self.inodes = HashSet::new();
            self.entries = HashSet::new();
            self.blocks = HashMap::new();
            self.listed = 0;
            self.overflow = true;
        }
    }
}

/// The local tree's bookkeeping across connections: which inode is which
/// file, where blocks are, what changed since the last read.
#[derive(Default)]
pub(super) struct LocalView {
    pub(super) ready: bool,
    /// `Touched::through` when it was last read.
    pub(super) read_through: u64,
    pub(super) touched: Arc<Mutex<Touched>>,
    /// The commit the tree was last read at, held open (across
    /// connections): an inode a later read finds gone is known by the file
    /// id it had there (`None`: the next read is whole).
    pub(super) read_pin: Option<crate::store::Pinned>,
    /// The peer's state changed since it was last saved.
    pub(super) unsaved: bool,
    /// The push counter the state last saved held.
    pub(super) saved_counter: u64,
}

/// What a refresh of the local tree did.
pub(super) struct Refreshed {
    /// Files whose state or names may have changed.
    pub(super) changed: HashSet<FileId>,
    /// false: an entry named a file the tree lacks.
    pub(super) whole: bool,
    /// Inodes read in part that the tree lacks: to be read whole.
    pub(super) again: Vec<u64>,
}

/// `f`, read in part (`FileState::only`), over `old`, the file as the
/// tree had it: the blocks it lists as the store has them, the rest cut
/// or kept. Copies the block list once, compares none of it.
fn patched(old: &Node, f: &FileState, part: &BlocksChanged) -> Node {
    let mut n = super::local::node_of(f);
    let listed = std::mem::take(&mut n.blocks);
    let mut blocks: Blocks = old.blocks.clone();
    if let Some(c) = part.cut {
        blocks.truncate(c);
    }
    let changes: Vec<_> = (part.blocks.iter())
        .map(|i| (*i, listed.get(i).copied()))
        .collect();
    blocks.set_many(&changes);
    n.blocks = blocks;
    n
}

impl LocalView {
    /// Folds what a read in part found into `local`. `was` gives the file
    /// id an inode that went had when the tree was last read (`None`: it
    /// had none then, so the tree never held it).
    pub(super) fn refresh(
        &mut self,
        local: &mut Tree,
        files: Vec<(u64, Option<crate::fs::remote::FileState>)>,
        entries: Vec<(FileId, Vec<u8>, Option<FileId>)>,
        was: &mut dyn FnMut(u64) -> Result<Option<FileId>, crate::sync::SyncError>,
    ) -> Result<Refreshed, crate::sync::SyncError> {
        let mut changed = HashSet::new();
        let mut again = Vec::new();
        // Files read in part that the tree lacks (new ones): read whole
        // next, so their names are no sign of a tree that lacks files.
        let mut coming = HashSet::new();
        for (ino, state) in files {
            match state {
                Some(f) => {
                    let node = match (&f.only, local.nodes.get(&f.id)) {
                        (None, _) => super::local::node_of(&f),
                        (Some(part), Some(old)) => patched(&old, &f, part),
                        // Without a name (unlinked while open): not in
                        // the tree, so not read whole at every write.
                        (Some(_), None) if f.inode.nlink == 0 => continue,
                        (Some(_), None) => {
                            again.push(ino);
                            coming.insert(f.id);
                            continue;
                        }
                    };
                    local.nodes.insert(f.id, node.into());
                    changed.insert(f.id);
                }
                None => {
                    if let Some(fid) = was(ino)? {
                        let inside: Vec<super::tree::Key> =
                            local.children(fid).map(|(k, _)| k.clone()).collect();
                        for k in inside {
                            changed.extend(local.unlink(&k));
                        }
                        local.remove_file(fid);
                        changed.insert(fid);
                    }
                }
            }
        }
        let mut whole = true;
        for (dir, name, child) in entries {
            let key = (dir, name);
            changed.extend(local.unlink(&key));
            if let Some(c) = child {
                whole &= local.nodes.contains_key(&c) || coming.contains(&c);
                local.link(key, c);
                changed.insert(c);
            }
        }
        // A file left without a name here is not in the tree (a file
        // unlinked while open lives on without one).
        for fid in &changed {
            if *fid != super::tree::ROOT_ID && local.names_of(*fid).next().is_none() {
                local.nodes.remove(fid);
            }
        }
        Ok(Refreshed {
            changed,
            whole,
            again,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Changed;

    /// An inode, and the cut and blocks a commit says changed (`None`: went).
    type Data<'a> = (u64, Option<(Option<u64>, &'a [u64])>);

    fn changed(version: u64, data: &[Data<'_>]) -> Changed {
        Changed {
            version,
            inodes: data.iter().map(|(i, _)| *i).collect(),
            entries: Vec::new(),
            data: (data.iter())
                .filter_map(|(i, d)| {
                    d.map(|(cut, b)| {
                        (
                            *i,
                            BlocksChanged {
                                cut,
                                blocks: b.to_vec(),
                            },
                        )
                    })
                })
                .collect(),
            ..Changed::default()
        }
    }

    /// The gap after a push holds while commits made here come; changes
    /// applied from elsewhere do not count.
    #[test]
    fn only_commits_made_here_keep_the_mount_busy() {
        let mut t = Touched::default();
        let mut c = changed(3, &[(7, None)]);
        c.own = true;
        t.add(&c);
        let mut c = changed(4, &[(8, None)]);
        c.own = false;
        t.add(&c);
        assert_eq!((t.through, t.own_through), (4, 3));
    }

    #[test]
    fn touched_files_are_read_in_part_only_while_every_commit_says_which_blocks_changed() {
        let mut t = Touched::default();
        t.add(&changed(1, &[(7, Some((None, &[1, 2]))), (8, None)]));
        t.add(&changed(2, &[(7, Some((Some(4), &[9])))]));
        // 8 went (or is new): whole, even if a later commit lists blocks.
        t.add(&changed(3, &[(8, Some((None, &[0])))]));
        assert_eq!(
            t.blocks.get(&7),
            Some(&BlocksChanged {
                cut: Some(4),
                blocks: vec![1, 2, 9]
            })
        );
        assert!(!t.blocks.contains_key(&8));
        assert_eq!(t.listed, 3);
        // Gone in a later commit: whole.
        t.add(&changed(4, &[(7, None)]));
        assert!(t.blocks.is_empty());
        assert_eq!((t.listed, t.through), (0, 4));
        // Too many blocks of one file: whole.
        let many: Vec<u64> = (0..=PART_BLOCKS_MAX as u64).collect();
        t.add(&changed(5, &[(9, Some((None, &many)))]));
        assert!(!t.blocks.contains_key(&9));
        assert_eq!(t.listed, 0);
    }

    fn state(ino: u64, id: FileId, blocks: Vec<(u64, [u8; 32])>) -> FileState {
        FileState {
            id,
            inode: crate::fs::Inode {
                ino,
                kind: crate::fs::Kind::File,
                perm: 0o644,
                nlink: 1,
                uid: 0,
                gid: 0,
                rdev: 0,
                flags: 0,
                size: 8 * 65536,
                parent: 1,
                atime: Default::default(),
                mtime: Default::default(),
                ctime: Default::default(),
                crtime: Default::default(),
                file_id: id,
            },
            blocks,
            xattrs: Vec::new(),
            target: Vec::new(),
            only: None,
        }
    }

    /// A new file comes read in part (its blocks are all it changed):
    /// it is read again whole, and its name is no sign that the tree
    /// lacks files (which would read the whole volume again).
    #[test]
    fn a_new_file_read_in_part_is_read_again_and_the_tree_stays_whole() {
        let mut view = LocalView::default();
        let mut local = Tree::default();
        let mut f = state(5, 20, vec![(0, [1; 32])]);
        f.only = Some(BlocksChanged {
            cut: None,
            blocks: vec![0],
        });
        let root = crate::sync::tree::ROOT_ID;
        let r = view
            .refresh(
                &mut local,
                vec![(5, Some(f))],
                vec![(root, b"new".to_vec(), Some(20))],
                &mut |_| Ok(None),
            )
            .unwrap();
        assert_eq!(r.again, [5]);
        assert!(r.whole, "a new file made the next read whole");
        let r = view
            .refresh(
                &mut local,
                vec![(5, Some(state(5, 20, vec![(0, [1; 32])])))],
                Vec::new(),
                &mut |_| Ok(None),
            )
            .unwrap();
        assert!(r.whole && r.again.is_empty());
        assert!(local.nodes.contains_key(&20));
        assert_eq!(local.entries.get(&(root, b"new".to_vec())), Some(20));
        // The inode goes: the id it had when last read names the file.
        let mut asked = Vec::new();
        let r = view
            .refresh(
                &mut local,
                vec![(5, None)],
                vec![(root, b"new".to_vec(), None)],
                &mut |ino| {
                    asked.push(ino);
                    Ok(Some(20))
                },
            )
            .unwrap();
        assert_eq!(asked, [5]);
        assert!(r.whole && r.changed.contains(&20));
        assert!(!local.nodes.contains_key(&20) && local.entries.is_empty());
    }

    /// A file unlinked while open changes without a name: read in part,
    /// it is left out, not read again whole at each commit that writes it.
    #[test]
    fn a_file_written_after_its_last_unlink_is_not_read_again_whole() {
        let mut view = LocalView::default();
        let mut local = Tree::default();
        let mut f = state(5, 20, vec![(3, [1; 32])]);
        f.inode.nlink = 0;
        f.only = Some(BlocksChanged {
            cut: None,
            blocks: vec![3],
        });
        let r = view
            .refresh(&mut local, vec![(5, Some(f))], Vec::new(), &mut |_| {
                Ok(None)
            })
            .unwrap();
        assert!(r.again.is_empty(), "read again: {:?}", r.again);
        assert!(r.whole && !local.nodes.contains_key(&20));
    }

    #[test]
    fn a_file_read_in_part_is_its_old_blocks_cut_and_patched() {
        let h = |b: u8| [b; 32];
        let mut old = Node::clone(
            &Tree::default()
                .nodes
                .get(&crate::sync::tree::ROOT_ID)
                .expect("a root"),
        );
        old.blocks = [(0, h(0)), (1, h(1)), (5, h(5)), (6, h(6))]
            .into_iter()
            .collect();
        // Of those listed, 1 is now a hole and 7 was written.
        let f = state(3, 10, vec![(0, h(9)), (7, h(7))]);
        let part = BlocksChanged {
            cut: Some(6),
            blocks: vec![7, 0, 1],
        };
        let n = patched(&old, &f, &part);
        let got: Vec<(u64, [u8; 32])> = n.blocks.iter().map(|(i, h)| (*i, *h)).collect();
        assert_eq!(got, [(0, h(9)), (5, h(5)), (7, h(7))]);
    }
}
