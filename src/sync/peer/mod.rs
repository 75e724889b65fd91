//! A peer's side of sync, without I/O: what it pushes, and what it does
//! with what the server sends. The network client drives it; the
//! simulation (`sim/`) drives many of them against a [`Relay`].
//!
//! ## What a peer keeps
//!
//! - `synced`: the log applied up to `applied`, by [`apply`];
//! - `local`: what its mount shows, `synced` plus its own changes not yet
//!   in the log;
//! - `counter`: the number of its last push (durable, never reused);
//! - the change-set in flight (one at a time), forgotten on disconnect:
//!   its changes are still in `local`, and the next push carries them.
//!
//! ## Receiving
//!
//! Another peer's change-set is applied to `synced`, then *rebased* into
//! `local`: the files it touched (and their directories, and whatever
//! stands in their names locally) are reset to `synced` and this peer's
//! own pending changes to them are applied again by the same [`apply`],
//! as if ordered after it, which they will be. A pending change that is
//! now concurrent is not applied; if it was a change of content, what this
//! peer had becomes a conflict copy, a new file it pushes like any other.
//! So the copy is made once, by the peer that lost, and reaches every
//! peer by the log. The peer's own change-sets coming back (an ack, or the
//! full change-set after a reconnect) are applied to `synced` only.
//!
//! `part.rs` cuts a pending change into pushes; `snapshot.rs` takes the
//! volume as of a cut log in place of the change-sets before it;
//! `relay.rs` is the server's side, for the simulation and the tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::apply::{Outcome, apply, free_conflict_name};
use super::tree::{ChangeSet, FileId, Op, PeerId, ROOT_ID, Stamp, Tree, diff};
use crate::fs::Kind;

mod part;
mod relay;
mod snapshot;

pub use relay::Relay;

/// The server broke the protocol; the caller drops the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Violation {
    #[error("sequence {got} arrived after {applied}: the log has a gap")]
    Gap { got: u64, applied: u64 },
    #[error("an ack for push {got} when push {expected:?} is in flight")]
    StrayAck { got: u64, expected: Option<u64> },
}

/// The most operations in one push, where a change can be cut (see
/// [`Peer::push_at_most`]): a peer applies a change-set whole, holding its
/// blocks, so smaller ones bound its memory and let it apply one while the
/// next one's blocks come.
pub const PUSH_OPS: usize = 1024;
/// The most blocks in one push (64 MiB of 64 KiB blocks), likewise.
pub const PUSH_BLOCKS: usize = 1024;
/// The fewest changes of the synced tree folded into the base at once
/// ([`Peer::fold_if_due`]).
#[cfg(not(test))]
const FOLD_MIN: usize = 4096;
/// Few in tests, so that the simulation's small trees fold often.
#[cfg(test)]
const FOLD_MIN: usize = 3;

/// What [`Peer::record`] keeps besides the trees' journals.
pub struct Saved {
    applied: u64,
    counter: u64,
    in_flight: Option<ChangeSet>,
    taken: Option<(u64, ChangeSet)>,
    /// `candidates` was `None` (every file) when recording began.
    all_candidates: bool,
}

#[derive(Clone)]
pub struct Peer {
    pub id: PeerId,
    pub name: String,
    pub synced: Tree,
    pub applied: u64,
    pub local: Tree,
    pub counter: u64,
    in_flight: Option<ChangeSet>,
    /// The push in flight when the connection went, until the next
    /// Welcome tells whether the server took it.
    unacked: Option<ChangeSet>,
    /// A push the server took (as the sequence here) whose ack never
    /// came: it reaches this peer in the log as its own change-set, or
    /// inside a snapshot ([`Peer::on_snapshot`]).
    taken: Option<(u64, ChangeSet)>,
    /// The files whose local state may differ from the synced one: only
    /// these, and those whose changes the local tree spilled
    /// (`Tree::spilled_files`), are compared at a push (`None`: all of
    /// them).
    candidates: Option<BTreeSet<FileId>>,
    /// While recording: the files `mark` added to `candidates`, which an
    /// undo takes out again (after a whole read of the tree the set holds
    /// every file not yet pushed: copied per apply, it cost that much).
    marked: Option<Vec<FileId>>,
    /// The trees' base is a tree store, which the owner folds into
    /// (`TreeStore::fold`): never folded in memory here.
    in_store: bool,
    /// The last walk for a push found nothing to push in the local
    /// tree's spilled changes (`Tree::spilled_files`), nor anything else:
    /// nothing waits there until something is spilled or marked again.
    spill_idle: bool,
}

impl Peer {
    pub fn new(id: PeerId, name: &str, mut tree: Tree) -> Peer {
        // Both trees start as the one base.
        tree.freeze();
        Peer {
            id,
            name: name.to_string(),
            synced: tree.clone(),
            applied: 0,
            local: tree,
            counter: 0,
            in_flight: None,
            unacked: None,
            taken: None,
            candidates: None,
            marked: None,
            in_store: false,
            spill_idle: false,
        }
    }

    /// Starts recording what follows (deliveries), so that [`Peer::undo`]
    /// can take it back without a copy of the trees (see [`Tree::record`]).
    pub fn record(&mut self) -> Saved {
        self.synced.record();
        self.local.record();
        self.marked = Some(Vec::new());
        Saved {
            applied: self.applied,
            counter: self.counter,
            in_flight: self.in_flight.clone(),
            taken: self.taken.clone(),
            all_candidates: self.candidates.is_none(),
        }
    }

    /// Takes back everything since [`Peer::record`] returned `saved`.
    pub fn undo(&mut self, saved: Saved) {
        self.synced.undo();
        self.local.undo();
        self.applied = saved.applied;
        self.counter = saved.counter;
        self.in_flight = saved.in_flight;
        self.taken = saved.taken;
        let marked = self.marked.take().unwrap_or_default();
        match &mut self.candidates {
            _ if saved.all_candidates => self.candidates = None,
            Some(c) => {
                for f in marked {
                    c.remove(&f);
                }
            }
            None => {}
        }
    }

    /// Keeps everything since [`Peer::record`], and stops recording.
    pub fn keep(&mut self) {
        self.synced.keep();
        self.local.keep();
        self.marked = None;
    }

    /// Lets `local` hold the synced tree's node of each of these files
    /// whose content is the same there (its stamps, which `local` never
    /// judges by: a rebase gives it the synced ones first), so that the
    /// two trees hold the file once.
    pub fn share(&mut self, fids: impl IntoIterator<Item = FileId>) {
        for fid in fids {
            if self.local.nodes.same_at(&self.synced.nodes, &fid) {
                continue;
            }
            if let (Some(s), Some(l)) = (self.synced.nodes.get(&fid), self.local.nodes.get(&fid))
                && !Arc::ptr_eq(&s, &l)
                && s.same_content(&l)
            {
                // While recording, an undo gives back its stamps too.
                self.local.touch(fid);
                self.local.nodes.take_from(&self.synced.nodes, &fid);
            }
        }
    }

    /// Folds what the synced tree applied into the base it shares with
    /// the local tree, once its changed files, names and entries number a
    /// sixteenth of its files (at least `FOLD_MIN`): the local tree then
    /// holds only what it has not pushed, and a fold's cost is spread over
    /// the changes it folds.
    fn fold_if_due(&mut self) {
        if !self.in_store && self.synced.changes() >= FOLD_MIN.max(self.synced.nodes.len() / 16) {
            Tree::fold(&mut self.synced, &mut self.local);
        }
    }

    /// The owner folds the trees into a tree store from now on.
    pub fn folds_in_store(&mut self) {
        self.in_store = true;
    }

    /// These files changed locally (or may have): the next push compares them.
    pub fn mark(&mut self, fids: impl IntoIterator<Item = FileId>) {
        if let Some(c) = &mut self.candidates {
            for f in fids {
                if c.insert(f)
                    && let Some(m) = &mut self.marked
                {
                    m.push(f);
                }
            }
        }
    }

    /// Compare every file at the next push (after reading the local tree
    /// whole).
    pub fn mark_all(&mut self) {
        self.candidates = None;
    }

    /// The local tree was read whole and these are the files it holds
    /// apart from the synced tree: the next push compares them (and
    /// whatever was marked before), not every file.
    pub fn mark_read(&mut self, differ: std::collections::BTreeSet<FileId>) {
        self.spill_idle = false;
        match &mut self.candidates {
            Some(c) => c.extend(differ),
            None => self.candidates = Some(differ),
        }
    }

    /// The connection went: what was in flight goes out again, in the
    /// next push (the server ignores the old one if it arrives after it),
    /// unless the next Welcome says it was taken ([`Peer::on_welcome`]).
    pub fn disconnected(&mut self) {
        if let Some(cs) = self.in_flight.take() {
            let fids: Vec<FileId> = cs.ops.iter().map(Op::fid).collect();
            self.mark(fids);
            self.unacked = Some(cs);
        }
    }

    /// The server's Welcome: the last push it took from this peer was
    /// `counter`, as sequence `seq`. If that is the push whose ack was
    /// lost, it is this peer's change from then on, not a pending one:
    /// the log brings it back as its own, or a snapshot holds it.
    /// A peer whose saved state is older than its last push (restored, or
    /// removed to join again) counts on from there: the server ignores a
    /// push numbered at or below the last it took, and would never ack it.
    pub fn on_welcome(&mut self, counter: u64, seq: u64) {
        self.counter = self.counter.max(counter);
        if let Some(cs) = self.unacked.take()
            && cs.counter == counter
            && seq > self.applied
        {
            self.taken = Some((seq, cs));
        }
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether files may differ from what the server has and are not in
    /// a push yet (all of them before the first read).
    pub fn has_waiting(&self) -> bool {
        self.candidates.as_ref().is_none_or(|c| !c.is_empty())
            || (self.local.is_spilled() && !self.spill_idle)
    }

    /// The local tree's changes of these files went out of memory
    /// (`TreeStore::spill`): a push's walk finds them there
    /// (`Tree::spilled_files`), so they need not be held as candidates.
    pub fn spilled(&mut self, went: &[FileId]) {
        if let Some(c) = &mut self.candidates {
            for f in went {
                c.remove(f);
            }
        }
        self.spill_idle = false;
    }

    /// The push in flight.
    pub fn in_flight_push(&self) -> Option<&ChangeSet> {
        self.in_flight.as_ref()
    }

    /// A push the server took whose ack was lost, and its sequence.
    pub fn taken_push(&self) -> Option<&(u64, ChangeSet)> {
        self.taken.as_ref()
    }

    /// The next change-set to push, if none is in flight and there is
    /// anything to push, of at most [`PUSH_OPS`] operations and
    /// [`PUSH_BLOCKS`] blocks where the change allows. `time` is left for
    /// the server to set.
    pub fn push(&mut self) -> Option<ChangeSet> {
        self.push_at_most(PUSH_OPS, PUSH_BLOCKS)
    }

    /// The server took push `counter` as sequence `seq` at `time`.
    pub fn on_ack(&mut self, seq: u64, counter: u64, time: i64) -> Result<(), Violation> {
        self.next(seq)?;
        match self.in_flight.take() {
            Some(mut cs) if cs.counter == counter => {
                cs.time = time;
                let out = apply(&mut self.synced, seq, &cs);
                self.applied = seq;
                self.share(out.touched.iter().copied());
                // What the log made of it may differ from what was pushed
                // (a skipped op, a conflict name): compare those again.
                self.mark(out.touched);
                self.mark(
                    out.skipped
                        .iter()
                        .filter_map(|&i| cs.ops.get(i).map(Op::fid)),
                );
                self.fold_if_due();
                Ok(())
            }
            other => Err(Violation::StrayAck {
                got: counter,
                expected: other.map(|c| c.counter),
            }),
        }
    }

    /// The push in flight was acknowledged as sequence `seq`, and a
    /// snapshot already queued or applied holds it (the server cut its log
    /// past it before the ack went): no sequence of its own to apply, the
    /// snapshot brings it. One still to come finds it there as a push
    /// taken ([`Peer::on_snapshot`]); what it named is compared again at
    /// the next push.
    pub fn on_ack_within_snapshot(&mut self, counter: u64, seq: u64) -> Result<(), Violation> {
        match self.in_flight.take() {
            Some(cs) if cs.counter == counter => {
                self.mark(cs.ops.iter().map(Op::fid).collect::<Vec<_>>());
                if seq > self.applied {
                    self.taken = Some((seq, cs));
                }
                Ok(())
            }
            other => Err(Violation::StrayAck {
                got: counter,
                expected: other.map(|c| c.counter),
            }),
        }
    }

    /// Sequence `seq` of the log. Returns the files whose local state
    /// changed (for the kernel's caches), or nothing for one already seen.
    pub fn on_deliver(
        &mut self,
        seq: u64,
        cs: &ChangeSet,
        now: i64,
        new_fid: &mut dyn FnMut() -> FileId,
    ) -> Result<BTreeSet<FileId>, Violation> {
        if seq <= self.applied {
            return Ok(BTreeSet::new());
        }
        self.next(seq)?;
        if cs.origin == self.id {
            // Our own, back after a reconnect: already in `local`.
            if self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.counter == cs.counter)
            {
                self.in_flight = None;
            }
            if self.taken.as_ref().is_some_and(|(s, _)| *s <= seq) {
                self.taken = None;
            }
            let out = apply(&mut self.synced, seq, cs);
            self.applied = seq;
            self.share(out.touched.iter().copied());
            self.mark(out.touched);
            self.mark(cs.ops.iter().map(Op::fid));
            self.fold_if_due();
            return Ok(BTreeSet::new());
        }
        // The synced state before, of the files the change-set names (the
        // only ones it can change): O(change), not a copy of the tree.
        let named: BTreeSet<FileId> = cs.ops.iter().map(Op::fid).collect();
        let mut before = Tree::empty();
        before.copy_from(&self.synced, named.iter().copied());
        let out = apply(&mut self.synced, seq, cs);
        self.applied = seq;
        let changed = self.rebase(&mut before, &named, seq, seq - 1, &out, now, new_fid);
        self.mark(changed.iter().copied());
        self.fold_if_due();
        Ok(changed)
    }

    /// Sequence `seq` again, after a restart, onto `synced` alone: the
    /// store already holds what it did (`client/journal.rs`), and `local`
    /// is read from the store. Nothing for one already applied.
    pub fn replay(&mut self, seq: u64, cs: &ChangeSet) -> Result<(), Violation> {
        if seq <= self.applied {
            return Ok(());
        }
        self.next(seq)?;
        apply(&mut self.synced, seq, cs);
        self.applied = seq;
        self.candidates = None;
        self.fold_if_due();
        Ok(())
    }

    fn next(&self, seq: u64) -> Result<(), Violation> {
        if seq != self.applied + 1 {
            return Err(Violation::Gap {
                got: seq,
                applied: self.applied,
            });
        }
        Ok(())
    }

    /// Brings `local` onto the new `synced` around what sequence `seq`
    /// touched, keeping this peer's pending changes (see the module doc),
    /// which were made on sequence `base`.
    #[allow(clippy::too_many_arguments)]
    fn rebase(
        &mut self,
        old: &mut Tree,
        named: &BTreeSet<FileId>,
        seq: u64,
        base: u64,
        out: &Outcome,
        now: i64,
        new_fid: &mut dyn FnMut() -> FileId,
    ) -> BTreeSet<FileId> {
        let near = self.neighbourhood(old, &out.touched);
        // Files the change-set did not name are as they were.
        old.copy_from(
            &self.synced,
            near.iter().copied().filter(|f| !named.contains(f)),
        );
        let pending = diff(old, &self.local, Some(&near));
        let mine: BTreeMap<FileId, (Arc<crate::sync::tree::Node>, Option<crate::sync::tree::Key>)> =
            near.iter()
                .filter_map(|f| {
                    let n = self.local.nodes.get(f)?;
                    Some((*f, (n, self.local.names_of(*f).next())))
                })
                .collect();
        for &fid in &near {
            self.local.remove_file(fid);
        }
        for &fid in &near {
            if let Some(n) = self.synced.nodes.get(&fid) {
                self.local.put_node(fid, n.clone());
            }
        }
        for &fid in &near {
            for k in self.synced.names_of(fid) {
                self.local.link(k.clone(), fid);
            }
        }
        let again = ChangeSet {
            origin: self.id,
            origin_name: self.name.clone(),
            counter: 0,
            base,
            time: now,
            ops: pending,
        };
        let replayed = apply(&mut self.local, seq, &again);
        let mut changed = near;
        for &i in &replayed.skipped {
            let Some(Op::Node { fid, .. }) = again.ops.get(i) else {
                continue;
            };
            let Some((node, name)) = mine.get(fid) else {
                continue;
            };
            // A directory's attributes: the first change wins, no copy;
            // and none when both peers made the same change.
            let same = self
                .local
                .nodes
                .get(fid)
                .is_some_and(|n| n.same_content(node));
            if node.meta.kind == Kind::Dir || same {
                continue;
            }
            let copy = new_fid();
            let mut node = crate::sync::tree::Node::clone(node);
            node.changed = Stamp::default();
            node.renamed = Stamp::default();
            self.local.put_node(copy, node);
            let (dir, base) = name
                .clone()
                .or_else(|| old.names_of(*fid).next())
                .unwrap_or((ROOT_ID, b"file".to_vec()));
            let dir = if self.local.is_dir(dir) { dir } else { ROOT_ID };
            // Deleted there and changed here: the change keeps the name
            // if it is free.
            let name = if !self.local.nodes.contains_key(fid)
                && !self.local.entries.contains_key(&(dir, base.clone()))
            {
                base
            } else {
                free_conflict_name(&self.local, dir, &base, &self.name, now)
            };
            self.local.link((dir, name), copy);
            changed.insert(copy);
        }
        changed
    }

    /// The files whose local state may depend on what changed: those
    /// touched, the directories they are named in, whatever stands locally
    /// in those names, and the local entries of directories that went.
    fn neighbourhood(&self, old: &Tree, touched: &BTreeSet<FileId>) -> BTreeSet<FileId> {
        let mut near: BTreeSet<FileId> = BTreeSet::new();
        let mut todo: Vec<FileId> = touched.iter().copied().collect();
        for &fid in touched {
            todo.extend(old.names_of(fid).map(|k| k.0));
        }
        while let Some(fid) = todo.pop() {
            if fid == ROOT_ID || !near.insert(fid) {
                continue;
            }
            for k in self.synced.names_of(fid) {
                todo.push(k.0);
                if let Some(occupant) = self.local.entries.get(&k) {
                    todo.push(occupant);
                }
            }
            if !self.synced.nodes.contains_key(&fid) {
                todo.extend(self.local.children(fid).map(|(_, c)| c));
            }
        }
        near
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Time;
    use crate::sync::tree::{Meta, Node};

    pub(super) fn file(blocks: &[(u64, u8)]) -> Node {
        Node {
            meta: Meta {
                kind: Kind::File,
                perm: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                size: 4096 * blocks.len() as u64,
                mtime: Time::default(),
            },
            blocks: blocks.iter().map(|&(i, b)| (i, [b; 32])).collect(),
            xattrs: Default::default(),
            target: vec![],
            changed: Stamp::default(),
            renamed: Stamp::default(),
        }
    }

    /// A relay whose log holds peer 1's new file 10, named "a", as
    /// sequence 1; the empty tree, and the tree after it.
    pub(super) fn one_file_from_p1() -> (Relay, Tree, Tree) {
        let mut relay = Relay::default();
        let empty = Tree::default();
        let mut one = empty.clone();
        one.put_node(10, file(&[(0, 1)]));
        one.link((ROOT_ID, b"a".to_vec()), 10);
        relay.take(1, "p1", push(&empty, &one, 1, 0), 0);
        (relay, empty, one)
    }

    /// New file ids for conflict copies: 101, 102, ...
    pub(super) fn fids() -> impl FnMut() -> FileId {
        let mut n = 100u128;
        move || {
            n += 1;
            n
        }
    }

    /// A push of `to` over `from` by `origin`, made on `base`.
    pub(super) fn push(from: &Tree, to: &Tree, origin: PeerId, base: u64) -> ChangeSet {
        ChangeSet {
            origin,
            origin_name: format!("p{origin}"),
            counter: base + 1,
            base,
            time: 1_796_385_781,
            ops: diff(from, to, None),
        }
    }

    /// An apply that is undone takes back the files it marked for the
    /// next push, and only those; one that is kept keeps them.
    #[test]
    fn an_undone_apply_unmarks_only_what_it_marked() {
        let mut p = Peer::new(2, "p2", Tree::default());
        p.candidates = Some([10, 11].into());
        let saved = p.record();
        p.mark([11, 12, 13]);
        p.undo(saved);
        assert_eq!(p.candidates, Some([10, 11].into()));
        let _ = p.record();
        p.mark([12]);
        p.keep();
        assert_eq!(p.candidates, Some([10, 11, 12].into()));
        // Marks outside a recording are not journaled.
        p.mark([14]);
        assert_eq!(p.marked, None);
        p.mark_all();
        let saved = p.record();
        p.mark([15]);
        p.undo(saved);
        assert_eq!(p.candidates, None, "every file, as before");
    }

    /// A peer that lost its saved state (removed, or a store restored
    /// from before its last pushes) numbers its next push past the last
    /// the server took, which the server would otherwise ignore forever.
    #[test]
    fn a_peer_without_its_saved_counter_pushes_past_the_last_one_taken() {
        let mut p = Peer::new(2, "p2", Tree::default());
        p.on_welcome(500, 7);
        p.local.put_node(10, file(&[(0, 1)]));
        p.local.link((ROOT_ID, b"a".to_vec()), 10);
        let mut relay = Relay::default();
        relay.last_taken.insert(2, (500, 7));
        let cs = p.push().expect("the new file");
        assert_eq!(cs.counter, 501);
        assert!(
            relay.take(2, "p2", cs, 0).is_some(),
            "the server ignored it"
        );
    }
}
