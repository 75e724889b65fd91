//! The volume as of a sequence, in parts: what the server keeps in place
//! of the log it cut, and sends a peer that is behind the cut
//! ([`crate::sync::peer::Peer::on_snapshot`] takes it).
//!
//! A part (`Msg::Snapshot`) carries a change-set and the stamps of the
//! files it names. Its change-set holds, file by file in id order, a Node
//! op with `whole` set (the file's content) and a Names op adding every
//! name of the file. A file with more blocks than a part holds continues
//! in the next parts as Node ops without `whole`, each adding blocks. The
//! parts of one snapshot share its sequence; the last has `last` set.

use std::collections::BTreeMap;

use super::tree::{ChangeSet, FileId, Node, Op, ROOT_ID, Stamp, Tree, whole};
use super::wire::{MAX_STAMPS, Msg};
use crate::fs::Kind;

/// The most blocks one part carries (about 11 MiB encoded, well within
/// a change-set's limit).
pub const PART_BLOCKS: usize = 1 << 18;

/// The most bytes of names, xattrs and targets one part carries (with
/// [`PART_BLOCKS`] blocks, still well within a change-set's limit).
const PART_BYTES: usize = 16 << 20;

/// About what a file's node and names take encoded, blocks aside.
fn other_bytes(tree: &Tree, fid: FileId, node: &Node) -> usize {
    64 + node.target.len()
        + node
            .xattrs
            .iter()
            .map(|(k, v)| 16 + k.len() + v.len())
            .sum::<usize>()
        + tree.names_of(fid).map(|(_, n)| 24 + n.len()).sum::<usize>()
}

/// `tree` as of sequence `seq`, in parts of at most `max_blocks` blocks
/// and [`MAX_STAMPS`] files each.
pub fn parts(tree: &Tree, seq: u64, max_blocks: usize) -> Vec<Msg> {
    let max_blocks = max_blocks.max(1);
    let mut out = Vec::new();
    let mut part = Part::default();
    for (fid, node) in &tree.nodes {
        let other = other_bytes(tree, fid, &node);
        if part.stamps.len() >= MAX_STAMPS
            || (!part.ops.is_empty()
                && (part.blocks + node.blocks.len() > max_blocks
                    || part.bytes + other > PART_BYTES))
        {
            out.push(part.take(seq));
        }
        part.bytes += other;
        let mut op = whole(fid, &node);
        // The blocks past the first part's worth go in parts of their own.
        let rest = match &mut op {
            Op::Node { blocks, .. } if blocks.len() > max_blocks => blocks.split_off(max_blocks),
            _ => Vec::new(),
        };
        part.blocks += node.blocks.len() - rest.len();
        part.ops.push(op);
        part.ops.push(Op::Names {
            fid,
            removed: Vec::new(),
            added: tree.names_of(fid).collect(),
        });
        part.stamps.push((fid, node.changed, node.renamed));
        for more in rest.chunks(max_blocks) {
            out.push(part.take(seq));
            part.blocks = more.len();
            part.ops.push(Op::Node {
                fid,
                whole: false,
                meta: node.meta.clone(),
                cut: None,
                blocks: more.to_vec(),
                xattrs: Vec::new(),
                target: None,
            });
        }
    }
    let mut last = part.take(seq);
    if let Msg::Snapshot { last: l, .. } = &mut last {
        *l = true;
    }
    out.push(last);
    out
}

#[derive(Default)]
struct Part {
    ops: Vec<Op>,
    stamps: Vec<(FileId, Stamp, Stamp)>,
    blocks: usize,
    bytes: usize,
}

impl Part {
    fn take(&mut self, seq: u64) -> Msg {
        let p = std::mem::take(self);
        Msg::Snapshot {
            seq,
            last: false,
            cs: ChangeSet {
                origin: 0,
                origin_name: String::new(),
                counter: 0,
                base: seq,
                time: 0,
                ops: p.ops,
            },
            stamps: p.stamps,
        }
    }
}

/// Builds the tree back from its parts, checking what a tree relies on.
#[derive(Default)]
pub struct Assembler {
    seq: Option<u64>,
    tree: Option<Tree>,
}

impl Assembler {
    /// Takes one part; returns the sequence and the tree after the last.
    pub fn add(
        &mut self,
        seq: u64,
        last: bool,
        cs: &ChangeSet,
        stamps: &[(FileId, Stamp, Stamp)],
    ) -> Result<Option<(u64, Tree)>, String> {
        if *self.seq.get_or_insert(seq) != seq {
            return Err(format!(
                "a part of the snapshot at {seq} among those at {:?}",
                self.seq
            ));
        }
        let tree = self.tree.get_or_insert_with(Tree::empty);
        for op in &cs.ops {
            match op {
                Op::Node {
                    fid,
                    whole,
                    meta,
                    blocks,
                    xattrs,
                    target,
                    ..
                } => {
                    let mut add = Vec::with_capacity(blocks.len());
                    for (i, h) in blocks {
                        let h = h.ok_or_else(|| format!("a hole in file {fid:x}"))?;
                        add.push((*i, h));
                    }
                    if *whole {
                        if tree.nodes.contains_key(fid) {
                            return Err(format!("file {fid:x} twice"));
                        }
                        let mut x = BTreeMap::new();
                        for (k, v) in xattrs {
                            let v = v
                                .clone()
                                .ok_or_else(|| format!("an xattr removed in {fid:x}"))?;
                            x.insert(k.clone(), v);
                        }
                        tree.nodes.insert(
                            *fid,
                            Node {
                                meta: meta.clone(),
                                blocks: add.into_iter().collect(),
                                xattrs: x,
                                target: target.clone().unwrap_or_default(),
                                changed: Stamp::default(),
                                renamed: Stamp::default(),
                            }
                            .into(),
                        );
                    } else {
                        let n = tree
                            .node_mut(*fid)
                            .ok_or_else(|| format!("more blocks of file {fid:x} before it"))?;
                        n.blocks.extend(add);
                    }
                }
                Op::Names {
                    fid,
                    removed,
                    added,
                } => {
                    if !removed.is_empty() {
                        return Err(format!("names removed from {fid:x}"));
                    }
                    for k in added {
                        if tree.entries.contains_key(k) {
                            return Err(format!("a name of {fid:x} given twice"));
                        }
                        tree.link(k.clone(), *fid);
                    }
                }
            }
        }
        for (fid, changed, renamed) in stamps {
            let n = tree
                .node_mut(*fid)
                .ok_or_else(|| format!("stamps of {fid:x}, which is not there"))?;
            n.changed = *changed;
            n.renamed = *renamed;
        }
        if !last {
            return Ok(None);
        }
        let tree = self.tree.take().unwrap_or_else(Tree::empty);
        check(&tree)?;
        self.seq = None;
        Ok(Some((seq, tree)))
    }
}

/// What every tree is: a root directory; every name in a directory that
/// is there; every file but the root named, every directory once.
pub fn check(t: &Tree) -> Result<(), String> {
    if !t.is_dir(ROOT_ID) {
        return Err("no root directory".into());
    }
    for ((dir, _), fid) in &t.entries {
        if !t.is_dir(dir) || !t.nodes.contains_key(&fid) || fid == ROOT_ID {
            return Err(format!("an entry of {dir:x} naming {fid:x}"));
        }
    }
    for (fid, n) in &t.nodes {
        let names = t.names_of(fid).count();
        let want = match (fid == ROOT_ID, n.meta.kind == Kind::Dir) {
            (true, _) => names == 0,
            (false, true) => names == 1 && t.is_within(fid, ROOT_ID),
            (false, false) => names > 0,
        };
        if !want {
            return Err(format!("file {fid:x} has {names} names"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Time;
    use crate::sync::tree::Meta;
    use crate::sync::wire::Msg;

    fn node(kind: Kind, blocks: u64, stamp: u64) -> Node {
        Node {
            meta: Meta {
                kind,
                perm: 0o640,
                uid: 7,
                gid: 8,
                rdev: 0,
                size: blocks * 4096,
                mtime: Time { sec: 5, nsec: 6 },
            },
            blocks: (0..blocks).map(|i| (i * 2, [i as u8; 32])).collect(),
            xattrs: [(b"user.a".to_vec(), b"b".to_vec())].into(),
            target: Vec::new(),
            changed: Stamp {
                seq: stamp,
                origin: 2,
            },
            renamed: Stamp {
                seq: stamp + 1,
                origin: 3,
            },
        }
    }

    fn sample() -> Tree {
        let mut t = Tree::default();
        t.put_node(5, node(Kind::Dir, 0, 4));
        t.link((ROOT_ID, b"d".to_vec()), 5);
        t.put_node(6, node(Kind::File, 10, 6));
        t.link((5, b"f".to_vec()), 6);
        t.link((ROOT_ID, b"hard".to_vec()), 6);
        t.put_node(7, node(Kind::File, 0, 9));
        t.link((ROOT_ID, b"empty".to_vec()), 7);
        t
    }

    fn rebuild(msgs: &[Msg]) -> Result<(u64, Tree), String> {
        let mut a = Assembler::default();
        let mut got = None;
        for m in msgs {
            let Msg::Snapshot {
                seq,
                last,
                cs,
                stamps,
            } = m
            else {
                panic!("not a part");
            };
            // Each part goes over the wire.
            let mut b = Vec::new();
            m.encode(&mut b).unwrap();
            assert!(Msg::decode_frame(&b).unwrap().is_some());
            got = a.add(*seq, *last, cs, stamps)?;
        }
        got.ok_or_else(|| "no last part".into())
    }

    #[test]
    fn a_tree_comes_back_from_its_parts_stamps_and_all_however_it_is_cut() {
        let t = sample();
        for max in [1, 3, 4, 100] {
            let msgs = parts(&t, 42, max);
            let (seq, back) = rebuild(&msgs).unwrap();
            assert_eq!(seq, 42);
            assert_eq!(back.nodes, t.nodes, "cut at {max} blocks");
            assert_eq!(back.entries, t.entries);
            assert_eq!(back.names, t.names);
        }
        // The ten blocks of the big file in parts of three: four parts for
        // it alone.
        assert!(parts(&t, 42, 3).len() >= 4);
    }

    /// Files with no blocks but large xattrs fill parts by bytes: every
    /// part stays within its frame's limit.
    #[test]
    fn parts_are_cut_by_bytes_as_well_as_by_blocks() {
        let mut t = Tree::default();
        for i in 0..1200u128 {
            let mut n = node(Kind::File, 0, 1);
            n.xattrs = [(b"user.big".to_vec(), vec![i as u8; 60_000])].into();
            t.put_node(100 + i, n);
            t.link((ROOT_ID, format!("f{i}").into_bytes()), 100 + i);
        }
        let msgs = parts(&t, 9, PART_BLOCKS);
        assert!(msgs.len() >= 4, "{} parts for 72 MB of xattrs", msgs.len());
        let (_, back) = rebuild(&msgs).expect("every part encodes and the tree comes back");
        assert_eq!(back.nodes, t.nodes);
    }

    #[test]
    fn parts_that_do_not_make_a_tree_are_refused() {
        let t = sample();
        let msgs = parts(&t, 42, 100);
        // A part lost (the one with the root, here the only one): no root.
        let mut broken = msgs.clone();
        if let Msg::Snapshot { cs, .. } = &mut broken[0] {
            cs.ops.retain(|op| op.fid() != ROOT_ID);
        }
        assert!(rebuild(&broken).is_err());
        // A name in a directory that is not there.
        let mut broken = msgs.clone();
        if let Msg::Snapshot { cs, .. } = &mut broken[0] {
            cs.ops.retain(|op| op.fid() != 5);
        }
        assert!(rebuild(&broken).is_err());
        // Parts of two snapshots mixed.
        let mut mixed = parts(&t, 42, 3);
        if let Some(Msg::Snapshot { seq, .. }) = mixed.last_mut() {
            *seq = 43;
        }
        assert!(rebuild(&mixed).is_err());
    }
}
