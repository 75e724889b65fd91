//! A snapshot in place of the log: the volume as the server had it at a
//! sequence, when it cut its log past what this peer applied, taken as
//! the synced tree, and this peer's pending changes brought onto it.

use std::collections::BTreeSet;

use super::super::apply::{Outcome, apply, apply_content};
use super::super::tree::{ChangeSet, FileId, Key, Layered, Op, Stamp, Tree};
use super::Peer;
use super::Violation;

impl Peer {
    /// [`Peer::replay`] of a snapshot: `synced` becomes `tree`.
    pub fn replay_snapshot(&mut self, seq: u64, mut tree: Tree) {
        if seq > self.applied {
            tree.freeze();
            self.synced = tree;
            // The local tree is read whole before it is used again
            // (`candidates` is every file): it lets go of the old base.
            self.local = self.synced.clone();
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
        self.fold_if_due();
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
                    let was: Vec<Key> = before.names_of(fid).collect();
                    for k in &was {
                        before.unlink(k);
                    }
                    for k in snap.names_of(fid) {
                        before.link(k.clone(), fid);
                    }
                }
                // Made by this push: as the log made it.
                (Op::Node { whole: true, .. }, None) if !self.synced.nodes.contains_key(&fid) => {
                    apply_content(before, own, cs, op);
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
}

/// The files whose node (stamps included) or names differ between `a`
/// and `b`.
fn differing(a: &Tree, b: &Tree) -> BTreeSet<FileId> {
    let mut out = BTreeSet::new();
    differing_in(&a.nodes, &b.nodes, &mut out);
    differing_in(&a.names, &b.names, &mut out);
    out
}

/// Adds to `out` the keys whose values differ between `a` and `b`.
fn differing_in<V: Clone + PartialEq>(
    a: &Layered<FileId, V>,
    b: &Layered<FileId, V>,
    out: &mut BTreeSet<FileId>,
) {
    for (x, y) in [(a, b), (b, a)] {
        out.extend(
            x.iter()
                .filter(|(fid, v)| y.get(fid).as_ref() != Some(v))
                .map(|(fid, _)| fid),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fids, file, one_file_from_p1, push};
    use super::super::{Peer, Relay};
    use super::*;
    use crate::sync::tree::ROOT_ID;

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
            p.local.nodes.get(&10).expect("in the tree").blocks[&0],
            [7; 32],
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
            p.local.nodes.get(&10).expect("in the tree").blocks[&0],
            [7; 32],
            "the other write keeps the name"
        );
        let copy = p
            .local
            .nodes
            .iter()
            .find(|(_, n)| n.blocks.get(&0) == Some(&[8; 32]));
        let copy = copy.expect("its own write, kept as a conflict copy").0;
        let name = p.local.names_of(copy).next().expect("the copy's name").1;
        assert!(
            String::from_utf8_lossy(&name).starts_with("a.conflict-p2-"),
            "{}",
            String::from_utf8_lossy(&name)
        );
        // And it goes out at the next push, as a new file.
        let cs = p.push().expect("the copy to push");
        assert!(cs.ops.iter().any(|op| op.fid() == copy));
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
        assert_eq!(
            snap.nodes.get(&10).expect("in the tree").blocks[&0],
            [2; 32]
        );
        p.on_snapshot(relay.cut, &snap, 0, &mut new_fid).unwrap();
        assert_eq!(
            p.local.nodes.get(&10).expect("in the tree").blocks[&0],
            [1; 32],
            "the undo was lost"
        );
        let cs = p.push().expect("the undo to push");
        assert!(
            cs.ops
                .iter()
                .any(|op| matches!(op, Op::Node { fid: 10, blocks, .. } if blocks == &vec![(0, Some([1; 32]))])),
            "{cs:?}"
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
