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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::apply::{Outcome, apply, free_conflict_name};
use super::tree::{ChangeSet, FileId, Key, Node, Op, PeerId, ROOT_ID, Stamp, Tree, diff};
use crate::fs::Kind;

mod part;

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
    /// these are compared at a push (`None`: all of them).
    candidates: Option<BTreeSet<FileId>>,
    /// While recording: the files `mark` added to `candidates`, which an
    /// undo takes out again (after a whole read of the tree the set holds
    /// every file not yet pushed: copied per apply, it cost that much).
    marked: Option<Vec<FileId>>,
}

impl Peer {
    pub fn new(id: PeerId, name: &str, tree: Tree) -> Peer {
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
            if let (Some(s), Some(l)) = (self.synced.nodes.get(&fid), self.local.nodes.get(&fid))
                && !Arc::ptr_eq(s, l)
                && s.same_content(l)
            {
                // While recording, an undo gives back its stamps too.
                let s = s.clone();
                self.local.put_node(fid, s);
            }
        }
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
        Ok(())
    }

    /// [`Peer::replay`] of a snapshot: `synced` becomes `tree`.
    pub fn replay_snapshot(&mut self, seq: u64, tree: Tree) {
        if seq > self.applied {
            self.synced = tree;
            self.applied = seq;
            self.candidates = None;
        }
    }

    /// The volume as the server had it at sequence `seq`, in place of the
    /// log up to there (the server cut its log: [`Relay::compact`]). The
    /// synced tree becomes `tree`, stamps and all, and this peer's pending
    /// changes are brought onto it as onto a delivery: a pending change is
    /// concurrent with whatever changed after the last sequence this peer
    /// applied, as it would have been with the log one change-set at a
    /// time. Returns the files whose local state changed.
    pub fn on_snapshot(
        &mut self,
        seq: u64,
        tree: &Tree,
        now: i64,
        new_fid: &mut dyn FnMut() -> FileId,
    ) -> Result<BTreeSet<FileId>, Violation> {
        if seq <= self.applied {
            return Ok(BTreeSet::new());
        }
        // A push of this peer's own the snapshot holds, whose ack was
        // lost: what it changed is no pending change of this peer's but
        // what the log made of it, as an own change-set would have been.
        // If it came next, applying it here is what the server did.
        // Behind others, it could succeed here where the log refused it
        // (a write concurrent with one ordered before it: that write would
        // then replace this one without a copy), so it is judged by what
        // the snapshot shows of it instead (`as_taken`).
        let mut behind = None;
        if let Some((s, cs)) = self.taken.take() {
            if s == self.applied + 1 {
                apply(&mut self.synced, s, &cs);
            } else if s <= seq {
                behind = Some((s, cs));
            } else {
                self.taken = Some((s, cs));
            }
        }
        let mut named = differing(&self.synced, tree);
        if let Some((_, cs)) = &behind {
            named.extend(cs.ops.iter().map(Op::fid));
        }
        let mut before = Tree::empty();
        before.copy_from(&self.synced, named.iter().copied());
        if let Some((s, cs)) = &behind {
            self.as_taken(&mut before, *s, cs, tree);
        }
        // Every file whose names change is in `named`, so removing them all
        // first leaves no name taken when they are linked again.
        for &fid in &named {
            self.synced.remove_file(fid);
        }
        for &fid in &named {
            if let Some(n) = tree.nodes.get(&fid) {
                self.synced.put_node(fid, n.clone());
            }
        }
        for &fid in &named {
            for k in tree.names_of(fid) {
                self.synced.link(k.clone(), fid);
            }
        }
        let base = self.applied;
        self.applied = seq;
        let out = Outcome {
            touched: named.clone(),
            skipped: Vec::new(),
        };
        let changed = self.rebase(&mut before, &named, seq, base, &out, now, new_fid);
        self.mark(changed.iter().copied());
        Ok(changed)
    }

    /// Brings into `before` (the synced state of the files a snapshot
    /// changes, against which this peer's pending changes are found) what
    /// its own push `cs`, taken as sequence `s` behind other peers'
    /// change-sets, is known to have done: a file's content or names
    /// whose stamp in `snap` is still that push's (the log applied them
    /// and nothing changed them since), and a file it made that is gone
    /// since (made by the log, whatever came before: a delete after it
    /// is a delete of it). The rest stays pending, to meet what came
    /// after as concurrent: never lost, at worst a conflict copy of what
    /// the log already had.
    fn as_taken(&self, before: &mut Tree, s: u64, cs: &ChangeSet, snap: &Tree) {
        let own = Stamp {
            seq: s,
            origin: self.id,
        };
        for op in &cs.ops {
            let fid = op.fid();
            match (op, snap.nodes.get(&fid)) {
                (Op::Node { .. }, Some(n)) if n.changed == own => {
                    before.put_node(fid, n.clone());
                }
                (Op::Names { .. }, Some(n)) if n.renamed == own => {
                    let was: Vec<Key> = before.names_of(fid).cloned().collect();
                    for k in &was {
                        before.unlink(k);
                    }
                    for k in snap.names_of(fid) {
                        before.link(k.clone(), fid);
                    }
                }
                (
                    Op::Node {
                        whole: true,
                        meta,
                        blocks,
                        xattrs,
                        target,
                        ..
                    },
                    None,
                ) if !self.synced.nodes.contains_key(&fid) => {
                    let node = Node {
                        meta: meta.clone(),
                        blocks: blocks
                            .iter()
                            .filter_map(|(i, h)| h.map(|h| (*i, h)))
                            .collect(),
                        xattrs: xattrs
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                            .collect(),
                        target: target.clone().unwrap_or_default(),
                        changed: own,
                        renamed: own,
                    };
                    before.put_node(fid, node);
                }
                (Op::Names { added, .. }, None) if !self.synced.nodes.contains_key(&fid) => {
                    for k in added {
                        before.link(k.clone(), fid);
                    }
                }
                _ => {}
            }
        }
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
                    let n = self.local.nodes.get(f)?.clone();
                    Some((*f, (n, self.local.names_of(*f).next().cloned())))
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
                .or_else(|| old.names_of(*fid).next().cloned())
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
                if let Some(&occupant) = self.local.entries.get(k) {
                    todo.push(occupant);
                }
            }
            if !self.synced.nodes.contains_key(&fid) {
                todo.extend(self.local.children(fid).map(|(_, c)| *c));
            }
        }
        near
    }
}

/// The files whose node (stamps included) or names differ between `a`
/// and `b`.
fn differing(a: &Tree, b: &Tree) -> BTreeSet<FileId> {
    let mut out = BTreeSet::new();
    for (fid, n) in &a.nodes {
        if b.nodes.get(fid) != Some(n) {
            out.insert(*fid);
        }
    }
    for (fid, n) in &b.nodes {
        if a.nodes.get(fid) != Some(n) {
            out.insert(*fid);
        }
    }
    for (fid, k) in &a.names {
        if b.names.get(fid) != Some(k) {
            out.insert(*fid);
        }
    }
    for (fid, k) in &b.names {
        if a.names.get(fid) != Some(k) {
            out.insert(*fid);
        }
    }
    out
}

/// The server's side, without I/O: the volume's log and who pushed what.
/// The log may be cut: the change-sets up to `cut` are then folded into
/// `snapshot` (the volume as of `cut`), and a peer that has applied less
/// gets the snapshot in their place ([`Peer::on_snapshot`]).
#[derive(Default)]
pub struct Relay {
    /// The change-sets after `cut`, in order.
    pub log: Vec<ChangeSet>,
    pub cut: u64,
    pub snapshot: Tree,
    /// Per peer, the last push taken: its counter and sequence.
    pub last_taken: BTreeMap<PeerId, (u64, u64)>,
}

impl Relay {
    /// The last sequence taken.
    pub fn head(&self) -> u64 {
        self.cut + self.log.len() as u64
    }

    /// Takes a push from `origin` (as the connection's credential says):
    /// the next sequence, or `None` for one at or below the last taken.
    pub fn take(&mut self, origin: PeerId, name: &str, mut cs: ChangeSet, now: i64) -> Option<u64> {
        let last = self.last_taken.get(&origin).map_or(0, |t| t.0);
        if cs.counter <= last {
            return None;
        }
        let counter = cs.counter;
        cs.origin = origin;
        cs.origin_name = name.to_string();
        cs.time = now;
        self.log.push(cs);
        self.last_taken.insert(origin, (counter, self.head()));
        Some(self.head())
    }

    /// Whether a peer that has applied `applied` needs the snapshot first.
    pub fn needs_snapshot(&self, applied: u64) -> bool {
        applied < self.cut
    }

    /// The change-sets after `applied` that the log still holds (after
    /// the cut), with their sequences.
    pub fn since(&self, applied: u64) -> impl Iterator<Item = (u64, &ChangeSet)> {
        let from = (applied.max(self.cut) - self.cut) as usize;
        let from = from.min(self.log.len());
        let cut = self.cut;
        self.log[from..]
            .iter()
            .enumerate()
            .map(move |(i, cs)| (cut + (from + i + 1) as u64, cs))
    }

    /// Cuts the log at sequence `upto` (at most the head): the change-sets
    /// up to it are applied to the snapshot, with the function every peer
    /// applies them with, and dropped.
    pub fn compact(&mut self, upto: u64) {
        let upto = upto.min(self.head());
        if upto <= self.cut {
            return;
        }
        let n = (upto - self.cut) as usize;
        for (i, cs) in self.log.drain(..n).enumerate() {
            apply(&mut self.snapshot, self.cut + i as u64 + 1, &cs);
        }
        self.cut = upto;
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
    fn one_file_from_p1() -> (Relay, Tree, Tree) {
        let mut relay = Relay::default();
        let empty = Tree::default();
        let mut one = empty.clone();
        one.put_node(10, file(&[(0, 1)]));
        one.link((ROOT_ID, b"a".to_vec()), 10);
        relay.take(1, "p1", push(&empty, &one, 1, 0), 0);
        (relay, empty, one)
    }

    /// New file ids for conflict copies: 101, 102, ...
    fn fids() -> impl FnMut() -> FileId {
        let mut n = 100u128;
        move || {
            n += 1;
            n
        }
    }

    /// Peer 2 makes file 10 and pushes it; the server takes it as 2,
    /// behind peer 3's new file (1); peer 3 then deletes it (3), and the
    /// log is cut at 3. Returns the relay, peer 2 (its push in flight),
    /// and the push's counter and sequence.
    fn pushed_behind_others_then_deleted() -> (Relay, Peer, u64, u64) {
        let mut relay = Relay::default();
        let empty = Tree::default();
        let mut other = empty.clone();
        other.put_node(20, file(&[(0, 9)]));
        other.link((ROOT_ID, b"b".to_vec()), 20);
        relay.take(3, "p3", push(&empty, &other, 3, 0), 0);
        let mut p = Peer::new(2, "p2", empty.clone());
        p.local.put_node(10, file(&[(0, 1)]));
        p.local.link((ROOT_ID, b"a".to_vec()), 10);
        let cs = p.push().expect("the new file");
        let counter = cs.counter;
        let seq = relay.take(2, "p2", cs, 0).expect("taken");
        assert_eq!(seq, 2, "behind peer 3's");
        let mut server = empty;
        for (i, cs) in relay.log.iter().enumerate() {
            apply(&mut server, i as u64 + 1, cs);
        }
        let mut gone = server.clone();
        gone.remove_file(10);
        relay.take(3, "p3", push(&server, &gone, 3, seq), 0);
        relay.compact(relay.head());
        (relay, p, counter, seq)
    }

    /// A push of `to` over `from` by `origin`, made on `base`.
    fn push(from: &Tree, to: &Tree, origin: PeerId, base: u64) -> ChangeSet {
        ChangeSet {
            origin,
            origin_name: format!("p{origin}"),
            counter: base + 1,
            base,
            time: 1_796_385_781,
            ops: diff(from, to, None),
        }
    }

    /// A push whose ack was lost, which the log ordered after another
    /// peer's write of the same file (and so did not apply), coming back
    /// inside a snapshot: the peer must not take it for applied. Applied
    /// onto what the peer had, where nothing stood in its way, it made the
    /// file look unchanged here, and the other write then replaced this
    /// one without a copy (sim seed 30,973).
    #[test]
    fn a_push_taken_behind_a_concurrent_write_and_returned_in_a_snapshot_keeps_its_write() {
        let (mut relay, empty, one) = one_file_from_p1();
        let mut p = Peer::new(2, "p2", empty.clone());
        let mut copies = 100u128;
        let mut new_fid = || {
            copies += 1;
            copies
        };
        p.on_deliver(1, &relay.log[0].clone(), 0, &mut new_fid)
            .unwrap();
        // Peer 3 writes the file (2); peer 2 writes it too, on 1, and
        // pushes; the server orders that after (3), its write refused.
        let mut theirs = one.clone();
        theirs.node_mut(10).unwrap().blocks.insert(0, [7; 32]);
        relay.take(3, "p3", push(&one, &theirs, 3, 1), 0);
        p.local.node_mut(10).unwrap().blocks.insert(0, [8; 32]);
        p.mark([10]);
        let mine = p.push().expect("its write to push");
        assert_eq!(relay.take(2, "p2", mine.clone(), 0), Some(3));
        // The ack is lost with the connection; the log is cut at 3.
        p.disconnected();
        p.on_welcome(mine.counter, 3);
        relay.compact(3);
        let snapshot = relay.snapshot.clone();
        p.on_snapshot(3, &snapshot, 1_796_385_800, &mut new_fid)
            .unwrap();
        assert_eq!(
            p.local.nodes[&10].blocks[&0], [7; 32],
            "the first write keeps the name"
        );
        assert!(
            p.local
                .nodes
                .values()
                .any(|n| n.blocks.get(&0) == Some(&[8; 32])),
            "its own write, kept as a conflict copy"
        );
    }

    /// A peer that missed sequences 2 and 3 and gets the snapshot at 3 in
    /// their place must judge its own pending write concurrent with the
    /// write another peer made at 2, as it would have with the log: the
    /// other write keeps the name, its own goes to a conflict copy. (Judged
    /// against the snapshot's sequence alone, its write would silently
    /// replace the other.)
    #[test]
    fn a_snapshot_counts_every_change_after_what_the_peer_had_as_concurrent() {
        let (mut relay, empty, one) = one_file_from_p1();
        let mut server = empty.clone();
        apply(&mut server, 1, &relay.log[0]);
        // Peer 3 writes the file (2), then makes another (3).
        let mut theirs = server.clone();
        theirs.node_mut(10).unwrap().blocks.insert(0, [7; 32]);
        relay.take(3, "p3", push(&server, &theirs, 3, 1), 0);
        let mut more = theirs.clone();
        more.put_node(11, file(&[(0, 3)]));
        more.link((ROOT_ID, b"b".to_vec()), 11);
        relay.take(3, "p3", push(&theirs, &more, 3, 2), 0);
        relay.compact(3);
        assert_eq!((relay.cut, relay.log.len()), (3, 0));

        // Peer 2 had applied 1 and wrote the file meanwhile.
        let mut p = Peer::new(2, "p2", empty);
        let first = relay.snapshot.clone();
        let mut copies = 100u128;
        let mut new_fid = || {
            copies += 1;
            copies
        };
        let cs1 = push(&Tree::default(), &one, 1, 0);
        p.on_deliver(1, &cs1, 0, &mut new_fid).unwrap();
        p.local.node_mut(10).unwrap().blocks.insert(0, [8; 32]);
        p.mark([10]);

        p.on_snapshot(3, &first, 1_796_385_800, &mut new_fid)
            .unwrap();
        assert_eq!(p.applied, 3);
        assert_eq!(p.synced.nodes, relay.snapshot.nodes, "stamps and all");
        assert_eq!(p.synced.entries, relay.snapshot.entries);
        assert_eq!(
            p.local.nodes[&10].blocks[&0], [7; 32],
            "the other write keeps the name"
        );
        let copy = p
            .local
            .nodes
            .iter()
            .find(|(_, n)| n.blocks.get(&0) == Some(&[8; 32]));
        let copy = *copy.expect("its own write, kept as a conflict copy").0;
        let name = &p.local.names_of(copy).next().expect("the copy's name").1;
        assert!(
            String::from_utf8_lossy(name).starts_with("a.conflict-p2-"),
            "{}",
            String::from_utf8_lossy(name)
        );
        // And it goes out at the next push, as a new file.
        let cs = p.push().expect("the copy to push");
        assert!(cs.ops.iter().any(|op| op.fid() == copy));
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

    /// A peer's push is taken but its ack is lost with the connection;
    /// another peer then deletes the file, and the server cuts its log
    /// past both. Told at the next Welcome that its push was taken, the
    /// peer finds it in the snapshot: the deleted file stays deleted and
    /// nothing is pushed again. (Taken for a pending change, the push
    /// brought the file back: a modification beats a delete.)
    #[test]
    fn a_push_whose_ack_was_lost_is_found_in_the_snapshot_not_pushed_again() {
        let mut relay = Relay::default();
        let empty = Tree::default();
        let mut one = empty.clone();
        one.put_node(10, file(&[(0, 1)]));
        one.link((ROOT_ID, b"a".to_vec()), 10);
        let mut new_fid = fids();
        let mut p = Peer::new(2, "p2", empty.clone());
        p.local = one.clone();
        let cs = p.push().expect("the new file");
        let counter = cs.counter;
        let seq = relay.take(2, "p2", cs, 0).expect("taken");
        // The connection goes before the ack.
        p.disconnected();
        let mut server = empty.clone();
        apply(&mut server, seq, &relay.log[0]);
        // Peer 3 deletes the file; the log is cut past it.
        let mut gone = server.clone();
        gone.remove_file(10);
        relay.take(3, "p3", push(&server, &gone, 3, seq), 0);
        relay.compact(relay.head());
        p.on_welcome(counter, seq);
        let snap = relay.snapshot.clone();
        p.on_snapshot(relay.cut, &snap, 0, &mut new_fid).unwrap();
        assert!(p.local.nodes.is_empty() || !p.local.nodes.contains_key(&10));
        assert!(p.local.names_of(10).next().is_none(), "the file came back");
        assert_eq!(p.push(), None, "nothing to push again");
    }

    /// As above, with another peer's change-set ordered before the push:
    /// the push cannot be applied over what this peer had (the server
    /// applied it over more), and is found in the snapshot instead.
    #[test]
    fn a_push_taken_behind_others_and_deleted_since_stays_deleted() {
        let (relay, mut p, counter, seq) = pushed_behind_others_then_deleted();
        let mut new_fid = fids();
        p.disconnected();
        p.on_welcome(counter, seq);
        let snap = relay.snapshot.clone();
        p.on_snapshot(relay.cut, &snap, 0, &mut new_fid).unwrap();
        assert!(!p.local.nodes.contains_key(&10), "the file came back");
        assert_eq!(p.push(), None, "nothing to push again");
        assert!(p.local.same_as(&snap));
    }

    /// A push taken behind another peer's change-set, whose ack was lost,
    /// then undone here (the block written back as it was) before the
    /// snapshot came: what the user wrote last is what stays.
    #[test]
    fn a_push_taken_behind_others_then_undone_here_keeps_the_undo() {
        let (mut relay, empty, one) = one_file_from_p1();
        let mut new_fid = fids();
        let mut p = Peer::new(2, "p2", empty.clone());
        p.on_deliver(1, &relay.log[0].clone(), 0, &mut new_fid)
            .unwrap();
        // Peer 3 makes another file (2); peer 2 writes block 0 (3).
        let mut other = one.clone();
        other.put_node(20, file(&[(0, 9)]));
        other.link((ROOT_ID, b"b".to_vec()), 20);
        relay.take(3, "p3", push(&one, &other, 3, 1), 0);
        p.local.node_mut(10).unwrap().blocks.insert(0, [2; 32]);
        p.mark([10]);
        let cs = p.push().expect("the write");
        let counter = cs.counter;
        let seq = relay.take(2, "p2", cs, 0).expect("taken");
        assert_eq!(seq, 3);
        p.disconnected();
        // Written back here, then the snapshot comes.
        p.local.node_mut(10).unwrap().blocks.insert(0, [1; 32]);
        p.mark([10]);
        relay.compact(relay.head());
        p.on_welcome(counter, seq);
        let snap = relay.snapshot.clone();
        assert_eq!(snap.nodes[&10].blocks[&0], [2; 32]);
        p.on_snapshot(relay.cut, &snap, 0, &mut new_fid).unwrap();
        assert_eq!(p.local.nodes[&10].blocks[&0], [1; 32], "the undo was lost");
        let cs = p.push().expect("the undo to push");
        assert!(
            cs.ops
                .iter()
                .any(|op| matches!(op, Op::Node { fid: 10, blocks, .. } if blocks == &vec![(0, Some([1; 32]))])),
            "{cs:?}"
        );
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

    /// The ack of a push the server had already folded into a snapshot
    /// this peer has queued: the push is found in the snapshot as a taken
    /// one is, so a delete made after it stays (marked for the next push
    /// only, the file came back from this peer).
    #[test]
    fn a_push_acked_inside_a_queued_snapshot_is_found_there() {
        let (relay, mut p, counter, seq) = pushed_behind_others_then_deleted();
        let mut new_fid = fids();
        p.on_ack_within_snapshot(counter, seq).unwrap();
        let snap = relay.snapshot.clone();
        p.on_snapshot(relay.cut, &snap, 0, &mut new_fid).unwrap();
        assert!(!p.local.nodes.contains_key(&10), "the file came back");
        assert_eq!(p.push(), None, "nothing to push again");
    }
}
