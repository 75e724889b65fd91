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

use super::apply::{Outcome, apply, free_conflict_name};
use super::tree::{ChangeSet, FileId, Op, PeerId, ROOT_ID, Stamp, Tree, diff};
use crate::fs::Kind;

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
    candidates: Option<BTreeSet<FileId>>,
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
    /// The files whose local state may differ from the synced one: only
    /// these are compared at a push (`None`: all of them).
    candidates: Option<BTreeSet<FileId>>,
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
            candidates: None,
        }
    }

    /// Starts recording what follows (deliveries), so that [`Peer::undo`]
    /// can take it back without a copy of the trees (see [`Tree::record`]).
    pub fn record(&mut self) -> Saved {
        self.synced.record();
        self.local.record();
        Saved {
            applied: self.applied,
            counter: self.counter,
            in_flight: self.in_flight.clone(),
            candidates: self.candidates.clone(),
        }
    }

    /// Takes back everything since [`Peer::record`] returned `saved`.
    pub fn undo(&mut self, saved: Saved) {
        self.synced.undo();
        self.local.undo();
        self.applied = saved.applied;
        self.counter = saved.counter;
        self.in_flight = saved.in_flight;
        self.candidates = saved.candidates;
    }

    /// Keeps everything since [`Peer::record`], and stops recording.
    pub fn keep(&mut self) {
        self.synced.keep();
        self.local.keep();
    }

    /// These files changed locally (or may have): the next push compares them.
    pub fn mark(&mut self, fids: impl IntoIterator<Item = FileId>) {
        if let Some(c) = &mut self.candidates {
            c.extend(fids);
        }
    }

    /// Compare every file at the next push (after reading the local tree
    /// whole).
    pub fn mark_all(&mut self) {
        self.candidates = None;
    }

    /// The connection went: what was in flight goes out again, in the
    /// next push (the server ignores the old one if it arrives after it).
    pub fn disconnected(&mut self) {
        if let Some(cs) = self.in_flight.take() {
            let fids: Vec<FileId> = cs.ops.iter().map(Op::fid).collect();
            self.mark(fids);
        }
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The next change-set to push, if none is in flight and there is
    /// anything to push, of at most [`PUSH_OPS`] operations and
    /// [`PUSH_BLOCKS`] blocks where the change allows. `time` is left for
    /// the server to set.
    pub fn push(&mut self) -> Option<ChangeSet> {
        self.push_at_most(PUSH_OPS, PUSH_BLOCKS)
    }

    /// [`Peer::push`] with these limits. A change bigger than them goes in
    /// several change-sets, one after the other; each is whole in itself
    /// (see [`Peer::part`]), so peers and the server apply each alone.
    pub fn push_at_most(&mut self, max_ops: usize, max_blocks: usize) -> Option<ChangeSet> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut ops = diff(&self.synced, &self.local, self.candidates.as_ref());
        self.candidates = Some(BTreeSet::new());
        let blocks = |ops: &[Op]| {
            ops.iter()
                .map(|o| match o {
                    Op::Node { blocks, .. } => blocks.len(),
                    Op::Names { .. } => 0,
                })
                .sum::<usize>()
        };
        if ops.len() > max_ops || blocks(&ops) > max_blocks {
            let part = self.part(&ops, max_ops, max_blocks);
            let rest: BTreeSet<FileId> = ops
                .iter()
                .map(Op::fid)
                .filter(|f| !part.contains(f))
                .collect();
            ops.retain(|o| part.contains(&o.fid()));
            self.candidates = Some(rest);
        }
        if ops.is_empty() {
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

    /// The files of the first part of `ops` (a change bigger than the
    /// limits), taken in order until the next would pass them. A file is
    /// taken with what its change needs to mean the same alone: the
    /// directories its new names are in if they changed too, whatever
    /// stood in those names before, and the former children of a
    /// directory it removes. Without them a peer would see a name taken
    /// twice, or a file put in a directory that does not exist yet, and
    /// make a conflict of what is one change.
    fn part(&self, ops: &[Op], max_ops: usize, max_blocks: usize) -> BTreeSet<FileId> {
        let mut cost: BTreeMap<FileId, (usize, usize)> = BTreeMap::new();
        for op in ops {
            let c = cost.entry(op.fid()).or_default();
            c.0 += 1;
            if let Op::Node { blocks, .. } = op {
                c.1 += blocks.len();
            }
        }
        let mut part = BTreeSet::new();
        let (mut n, mut b) = (0, 0);
        for op in ops {
            let fid = op.fid();
            if part.contains(&fid) {
                continue;
            }
            let mut with = BTreeSet::new();
            let mut todo = vec![fid];
            while let Some(f) = todo.pop() {
                if part.contains(&f) || !cost.contains_key(&f) || !with.insert(f) {
                    continue;
                }
                for k in self.local.names_of(f) {
                    if !self.synced.names_of(f).any(|o| o == k) {
                        todo.push(k.0);
                        todo.extend(self.synced.entries.get(k).copied());
                    }
                }
                if !self.local.nodes.contains_key(&f) || self.local.names_of(f).next().is_none() {
                    todo.extend(self.synced.children(f).map(|(_, c)| *c));
                }
            }
            let (dn, db) = with.iter().fold((0, 0), |(n, b), f| {
                let c = cost.get(f).copied().unwrap_or_default();
                (n + c.0, b + c.1)
            });
            if !part.is_empty() && (n + dn > max_ops || b + db > max_blocks) {
                break;
            }
            n += dn;
            b += db;
            part.extend(with);
        }
        part
    }

    /// The server took push `counter` as sequence `seq` at `time`.
    pub fn on_ack(&mut self, seq: u64, counter: u64, time: i64) -> Result<(), Violation> {
        self.next(seq)?;
        match self.in_flight.take() {
            Some(mut cs) if cs.counter == counter => {
                cs.time = time;
                let out = apply(&mut self.synced, seq, &cs);
                self.applied = seq;
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
            let out = apply(&mut self.synced, seq, cs);
            self.applied = seq;
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
        let changed = self.rebase(&mut before, &named, seq, &out, now, new_fid);
        self.mark(changed.iter().copied());
        Ok(changed)
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
    /// touched, keeping this peer's pending changes (see the module doc).
    fn rebase(
        &mut self,
        old: &mut Tree,
        named: &BTreeSet<FileId>,
        seq: u64,
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
        let mine: BTreeMap<FileId, (crate::sync::tree::Node, Option<crate::sync::tree::Key>)> =
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
            base: seq - 1,
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
            let mut node = node.clone();
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

/// The server's side, without I/O: the volume's log and who pushed what.
#[derive(Default)]
pub struct Relay {
    pub log: Vec<ChangeSet>,
    /// Per peer, the counter of the last push taken.
    pub last_counter: BTreeMap<PeerId, u64>,
}

impl Relay {
    /// Takes a push from `origin` (as the connection's credential says):
    /// the next sequence, or `None` for one at or below the last taken.
    pub fn take(&mut self, origin: PeerId, name: &str, mut cs: ChangeSet, now: i64) -> Option<u64> {
        let last = self.last_counter.entry(origin).or_default();
        if cs.counter <= *last {
            return None;
        }
        *last = cs.counter;
        cs.origin = origin;
        cs.origin_name = name.to_string();
        cs.time = now;
        self.log.push(cs);
        Some(self.log.len() as u64)
    }

    /// The change-sets after `applied`, with their sequences.
    pub fn since(&self, applied: u64) -> impl Iterator<Item = (u64, &ChangeSet)> {
        let from = (applied as usize).min(self.log.len());
        self.log[from..]
            .iter()
            .enumerate()
            .map(move |(i, cs)| ((from + i + 1) as u64, cs))
    }
}
