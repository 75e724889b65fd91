//! The local tree of a syncing mount, kept up to the last commit by
//! reading only what each commit changed: the commit hook feeds
//! [`Touched`], [`LocalView::refresh`] folds what `Fs::committed_part`
//! read of it into the tree, and keeps which inode is which file (where
//! each block is, the store's block index says: `fs::blockindex`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use super::tree::{FileId, Tree};

/// What the commits since the last read changed (fed by the commit hook),
/// bounded: past `TOUCHED_MAX` the next read is whole.
#[derive(Default)]
pub struct Touched {
    pub(super) inodes: HashSet<u64>,
    pub(super) entries: HashSet<(u64, Vec<u8>)>,
    pub(super) overflow: bool,
    /// The last commit added: its changes, and every earlier one's, are
    /// here or were read (its version may be visible before the hook
    /// adds it, so "nothing new" is judged by this, not by the store).
    pub(super) through: u64,
}

const TOUCHED_MAX: usize = 1 << 20;

impl Touched {
    pub(super) fn add(&mut self, c: &crate::fs::Changed) {
        self.through = self.through.max(c.version);
        if self.overflow {
            return;
        }
        self.inodes.extend(c.inodes.iter().copied());
        self.entries.extend(c.entries.iter().cloned());
        if self.inodes.len() + self.entries.len() > TOUCHED_MAX {
            self.inodes = HashSet::new();
            self.entries = HashSet::new();
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
    pub(super) ino_fid: HashMap<u64, FileId>,
    pub(super) touched: Arc<Mutex<Touched>>,
    /// The peer's state changed since it was last saved.
    pub(super) unsaved: bool,
    /// The size of the state last saved, and the push counter it held.
    pub(super) saved_bytes: u64,
    pub(super) saved_counter: u64,
}

/// What a refresh of the local tree did.
pub(super) struct Refreshed {
    /// Files whose state or names may have changed.
    pub(super) changed: HashSet<FileId>,
    /// false: an entry named a file the tree lacks.
    pub(super) whole: bool,
}

impl LocalView {
    pub(super) fn refresh(
        &mut self,
        local: &mut Tree,
        files: Vec<(u64, Option<crate::fs::remote::FileState>)>,
        entries: Vec<(FileId, Vec<u8>, Option<FileId>)>,
    ) -> Refreshed {
        let mut changed = HashSet::new();
        for (ino, state) in files {
            match state {
                Some(f) => {
                    self.ino_fid.insert(ino, f.id);
                    local.nodes.insert(f.id, super::local::node_of(&f).into());
                    changed.insert(f.id);
                }
                None => {
                    if let Some(fid) = self.ino_fid.remove(&ino) {
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
                whole &= local.nodes.contains_key(&c);
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
        Refreshed { changed, whole }
    }
}
