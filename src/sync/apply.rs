//! The one pure function every peer (and the simulation) applies the log
//! with (decision 9): the same change-sets in the same order give the same
//! tree everywhere, so peers converge without talking to each other.
//!
//! ## The rules
//!
//! A change-set was made on `base`, the last sequence its peer had
//! applied. A change to one aspect of a file is *concurrent* when another
//! peer changed the same aspect at a sequence after `base`. The aspects are
//! a file's content (attributes, data, xattrs, symlink target) and its
//! names. The log's order decides: the change already in the log stands,
//! and the concurrent one is not applied here. Its peer keeps what it
//! wrote as a conflict copy (`peer/`), so nothing is lost.
//!
//! - A content change concurrent with a content change, or made to a file
//!   since deleted, is not applied.
//! - A names change (rename, link, unlink) concurrent with a names change
//!   is not applied: the first rename wins.
//! - A delete (the last name removed) concurrent with a content change is
//!   not applied: the modification survives.
//! - A directory that would be deleted while it still has entries is kept.
//! - A name added where it cannot be (its directory is gone, the name is
//!   taken, a directory would go inside itself) is not added; a file that
//!   is left with no name then gets a conflict name
//!   (`<name>.conflict-<peer>-<UTC time><.ext>`) in that directory, or in
//!   the root if the directory is gone.
//! - A file left with no name is deleted.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::tree::{ChangeSet, FileId, Key, Node, Op, ROOT_ID, Stamp, Tree};
use crate::fs::NAME_MAX;

/// What applying a change-set did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The indexes of the ops that were not applied (concurrent, or
    /// impossible here).
    pub skipped: Vec<usize>,
    /// Every file whose content or names the change-set changed.
    pub touched: BTreeSet<FileId>,
}

/// Applies change-set `cs`, ordered as sequence `seq`, to `tree`.
pub fn apply(tree: &mut Tree, seq: u64, cs: &ChangeSet) -> Outcome {
    let stamp = Stamp {
        seq,
        origin: cs.origin,
    };
    let mut out = Outcome::default();
    for (i, op) in cs.ops.iter().enumerate() {
        if let Op::Node { .. } = op {
            if apply_content(tree, stamp, cs, op) {
                out.touched.insert(op.fid());
            } else {
                out.skipped.push(i);
            }
        }
    }
    apply_names(tree, stamp, cs, &mut out);
    // A file left with no name is gone (the root has none).
    for &fid in &out.touched {
        if fid != ROOT_ID && tree.names_of(fid).next().is_none() && tree.nodes.contains_key(&fid) {
            if tree.children(fid).next().is_some() {
                rescue(tree, fid, &(ROOT_ID, b"lost".to_vec()), cs);
            } else {
                tree.remove_file(fid);
            }
        }
    }
    out
}

/// Whether a change made on `cs.base` by `cs.origin` is concurrent with
/// the last change `last`.
fn concurrent(last: Stamp, cs: &ChangeSet) -> bool {
    last.seq > cs.base && last.origin != cs.origin
}

/// Applies one content op; false if it is not applied.
pub(super) fn apply_content(tree: &mut Tree, stamp: Stamp, cs: &ChangeSet, op: &Op) -> bool {
    let Op::Node {
        fid,
        whole,
        meta,
        cut,
        blocks,
        xattrs,
        target,
    } = op
    else {
        return false;
    };
    tree.touch(*fid);
    let node = match tree.nodes.get_mut(fid) {
        Some(n) => {
            if concurrent(n.changed, cs) || n.meta.kind != meta.kind {
                return false;
            }
            let n = Arc::make_mut(n);
            if *whole {
                n.blocks.clear();
                n.xattrs.clear();
            }
            n
        }
        // A file new to the volume, or one deleted since the change was made.
        None if *whole => {
            tree.nodes.insert(
                *fid,
                Arc::new(Node {
                    meta: meta.clone(),
                    blocks: Default::default(),
                    xattrs: Default::default(),
                    target: Vec::new(),
                    changed: stamp,
                    renamed: stamp,
                }),
            );
            match tree.nodes.get_mut(fid) {
                Some(n) => Arc::make_mut(n),
                None => return false,
            }
        }
        None => return false,
    };
    node.meta = meta.clone();
    if let Some(c) = cut {
        node.blocks.truncate(*c);
    }
    node.blocks.set_many(blocks);
    for (k, v) in xattrs {
        match v {
            Some(v) => node.xattrs.insert(k.clone(), v.clone()),
            None => node.xattrs.remove(k),
        };
    }
    if let Some(t) = target {
        node.target = t.clone();
    }
    node.changed = stamp;
    true
}

/// The names ops: all removals first, then all additions, so that a
/// rename over another file or an exchange works in any op order.
fn apply_names(tree: &mut Tree, stamp: Stamp, cs: &ChangeSet, out: &mut Outcome) {
    let mut live: Vec<(usize, FileId, &[Key], &[Key])> = Vec::new();
    for (i, op) in cs.ops.iter().enumerate() {
        let Op::Names {
            fid,
            removed,
            added,
        } = op
        else {
            continue;
        };
        if names_op_allowed(tree, cs, *fid, removed, added) {
            live.push((i, *fid, removed, added));
        } else {
            out.skipped.push(i);
        }
    }
    // A directory is not deleted while entries stay in it: drop such
    // deletes until none is left (keeping one keeps its name in its parent).
    loop {
        let removing: BTreeSet<&Key> = live.iter().flat_map(|(_, _, r, _)| r.iter()).collect();
        let keeps_entries = live.iter().position(|(_, fid, r, a)| {
            a.is_empty()
                && r.len() == tree.names_of(*fid).count()
                && tree.children(*fid).any(|(k, _)| !removing.contains(&k))
        });
        match keeps_entries {
            Some(at) => out.skipped.push(live.remove(at).0),
            None => break,
        }
    }
    for (_, fid, removed, _) in &live {
        for k in removed.iter() {
            tree.unlink(k);
        }
        out.touched.insert(*fid);
    }
    for (_, fid, _, added) in &live {
        let mut refused = None;
        for k in added.iter() {
            if can_add(tree, *fid, k) {
                tree.link(k.clone(), *fid);
            } else {
                refused.get_or_insert(k);
            }
        }
        if let Some(k) = refused
            && tree.names_of(*fid).next().is_none()
        {
            rescue(tree, *fid, k, cs);
        }
        if let Some(n) = tree.node_mut(*fid) {
            n.renamed = stamp;
        }
    }
    out.skipped.sort_unstable();
}

fn names_op_allowed(
    tree: &Tree,
    cs: &ChangeSet,
    fid: FileId,
    removed: &[Key],
    added: &[Key],
) -> bool {
    let Some(n) = tree.nodes.get(&fid) else {
        return false;
    };
    if fid == ROOT_ID || concurrent(n.renamed, cs) {
        return false;
    }
    if removed.iter().any(|k| tree.entries.get(k) != Some(fid)) {
        return false;
    }
    let deletes = added.is_empty() && removed.len() == tree.names_of(fid).count();
    !(deletes && concurrent(n.changed, cs))
}

/// Whether `fid` may take name `k` now.
fn can_add(tree: &Tree, fid: FileId, k: &Key) -> bool {
    let dir = tree.is_dir(fid);
    good_name(&k.1)
        && tree.is_dir(k.0)
        && !tree.entries.contains_key(k)
        && !(dir && (tree.names_of(fid).next().is_some() || tree.is_within(k.0, fid)))
}

pub fn good_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

/// Gives `fid`, which could not take name `k`, a conflict name: in `k`'s
/// directory if that can hold it, else in the root.
fn rescue(tree: &mut Tree, fid: FileId, k: &Key, cs: &ChangeSet) {
    let dir_ok = tree.is_dir(k.0) && !(tree.is_dir(fid) && tree.is_within(k.0, fid));
    let parent = if dir_ok { k.0 } else { ROOT_ID };
    let name = free_conflict_name(tree, parent, &k.1, &cs.origin_name, cs.time);
    tree.link((parent, name), fid);
}

/// The first conflict name for `name` not taken in `dir`: the time, then
/// `-2`, `-3`, ... after it when two conflicts of one name meet in one second.
pub fn free_conflict_name(tree: &Tree, dir: FileId, name: &[u8], peer: &str, time: i64) -> Vec<u8> {
    let mut n = 1u64;
    loop {
        let candidate = conflict_name_n(name, peer, time, n);
        if !tree.entries.contains_key(&(dir, candidate.clone())) {
            return candidate;
        }
        n += 1;
    }
}

/// `<stem>.conflict-<peer>-<YYYYMMDD-HHMMSS><.ext>` (UTC), within NAME_MAX.
pub fn conflict_name(name: &[u8], peer: &str, time: i64) -> Vec<u8> {
    conflict_name_n(name, peer, time, 1)
}

/// [`conflict_name`], the `n`th of that second (`-n` after the time, from 2).
fn conflict_name_n(name: &[u8], peer: &str, time: i64, n: u64) -> Vec<u8> {
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(at) if at > 0 => name.split_at(at),
        _ => (name, &b""[..]),
    };
    let iso = crate::fs::rfc3339((time.max(0) as u64).saturating_mul(1_000_000_000));
    // "2026-12-04T12:03:01..." → "20261204-120301"
    let digits: String = iso.chars().take(19).filter(char::is_ascii_digit).collect();
    let (date, clock) = digits.split_at(digits.len().min(8));
    let peer: String = peer
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    let nth = if n > 1 {
        format!("-{n}")
    } else {
        String::new()
    };
    let mark = format!(".conflict-{peer}-{date}-{clock}{nth}");
    let ext = &ext[..ext.len().min(NAME_MAX / 4)];
    let room = NAME_MAX.saturating_sub(mark.len() + ext.len()).max(1);
    let mut out = stem[..stem.len().min(room)].to_vec();
    out.extend_from_slice(mark.as_bytes());
    out.extend_from_slice(ext);
    out.truncate(NAME_MAX);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Kind, Time};
    use crate::sync::tree::{Meta, diff};

    fn meta(kind: Kind, size: u64) -> Meta {
        Meta {
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            mtime: Time::default(),
        }
    }

    fn cs(origin: u32, base: u64, ops: Vec<Op>) -> ChangeSet {
        ChangeSet {
            origin,
            origin_name: format!("p{origin}"),
            counter: 1,
            base,
            time: 1_796_385_781,
            ops,
        }
    }

    /// A tree with file 10 at /a holding one block.
    fn one_file() -> Tree {
        let mut t = Tree::default();
        let mut f = t.clone();
        f.nodes.insert(
            10,
            Node {
                meta: meta(Kind::File, 5),
                blocks: [(0, [1; 32])].into(),
                xattrs: Default::default(),
                target: vec![],
                changed: Stamp::default(),
                renamed: Stamp::default(),
            }
            .into(),
        );
        f.link((ROOT_ID, b"a".to_vec()), 10);
        apply(&mut t, 1, &cs(1, 0, diff(&Tree::default(), &f, None)));
        t
    }

    #[test]
    fn a_diff_applied_gives_the_tree_it_came_from() {
        let t = one_file();
        assert_eq!(t.entries.get(&(ROOT_ID, b"a".to_vec())), Some(10));
        let mut edited = t.clone();
        let n = edited.node_mut(10).unwrap();
        n.blocks.insert(3, [2; 32]);
        n.meta.size = 4 * 4096;
        edited.unlink(&(ROOT_ID, b"a".to_vec()));
        edited.link((ROOT_ID, b"b".to_vec()), 10);
        let mut again = t.clone();
        let out = apply(&mut again, 2, &cs(1, 1, diff(&t, &edited, None)));
        assert!(out.skipped.is_empty());
        assert!(again.same_as(&edited));
    }

    #[test]
    fn the_second_of_two_concurrent_writes_is_not_applied() {
        let mut t = one_file();
        let mut a = t.clone();
        a.node_mut(10).unwrap().blocks.insert(0, [7; 32]);
        let mut b = t.clone();
        b.node_mut(10).unwrap().blocks.insert(0, [8; 32]);
        let (da, db) = (diff(&t, &a, None), diff(&t, &b, None));
        assert!(apply(&mut t, 2, &cs(2, 1, da)).skipped.is_empty());
        assert_eq!(apply(&mut t, 3, &cs(3, 1, db)).skipped, vec![0]);
        assert_eq!(t.nodes.get(&10).expect("in the tree").blocks[&0], [7; 32]);
    }

    #[test]
    fn a_delete_concurrent_with_a_write_leaves_the_write() {
        let mut t = one_file();
        let mut w = t.clone();
        w.node_mut(10).unwrap().blocks.insert(0, [7; 32]);
        let mut d = t.clone();
        d.remove_file(10);
        let (dw, dd) = (diff(&t, &w, None), diff(&t, &d, None));
        apply(&mut t, 2, &cs(2, 1, dw));
        assert_eq!(apply(&mut t, 3, &cs(3, 1, dd)).skipped.len(), 1);
        assert_eq!(t.entries.get(&(ROOT_ID, b"a".to_vec())), Some(10));
    }

    #[test]
    fn directories_moved_into_each_other_end_in_one_tree() {
        let mut t = Tree::default();
        let mut f = t.clone();
        for (fid, name) in [(20, "x"), (21, "y")] {
            f.nodes.insert(
                fid,
                Node {
                    meta: meta(Kind::Dir, 0),
                    blocks: Default::default(),
                    xattrs: Default::default(),
                    target: vec![],
                    changed: Stamp::default(),
                    renamed: Stamp::default(),
                }
                .into(),
            );
            f.link((ROOT_ID, name.as_bytes().to_vec()), fid);
        }
        apply(&mut t, 1, &cs(1, 0, diff(&Tree::default(), &f, None)));
        let mut a = t.clone();
        a.unlink(&(ROOT_ID, b"x".to_vec()));
        a.link((21, b"x".to_vec()), 20);
        let mut b = t.clone();
        b.unlink(&(ROOT_ID, b"y".to_vec()));
        b.link((20, b"y".to_vec()), 21);
        let (da, db) = (diff(&t, &a, None), diff(&t, &b, None));
        apply(&mut t, 2, &cs(2, 1, da));
        apply(&mut t, 3, &cs(3, 1, db));
        // x went into y; y's move into x would make a loop: y gets a
        // conflict name in the root instead of being lost.
        assert!(t.is_within(20, ROOT_ID) && t.is_within(21, ROOT_ID));
        assert_eq!(t.names_of(20).next().unwrap().0, 21);
        let y = t.names_of(21).next().unwrap();
        assert_eq!(y.0, ROOT_ID);
        assert!(
            y.1.starts_with(b"y.conflict-p3-"),
            "{:?}",
            String::from_utf8_lossy(&y.1)
        );
    }

    #[test]
    fn conflict_names_keep_the_extension_and_fit() {
        let n = conflict_name(b"report.txt", "laptop", 1_796_385_781);
        assert_eq!(
            String::from_utf8_lossy(&n),
            "report.conflict-laptop-20261204-120301.txt"
        );
        assert_eq!(
            String::from_utf8_lossy(&conflict_name(b".bashrc", "a", 0)),
            ".bashrc.conflict-a-19700101-000000"
        );
        let long = conflict_name(&[b'x'; 255], "peer", 0);
        assert!(long.len() <= NAME_MAX && good_name(&long));
        assert_eq!(
            String::from_utf8_lossy(&conflict_name_n(b"a.txt", "p", 0, 3)),
            "a.conflict-p-19700101-000000-3.txt"
        );
    }
}
