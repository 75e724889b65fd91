//! A peer's sync state on disk (`<store>/sync.state`): what it has applied
//! of the log, and which version of its tree store (`tree/stored/`,
//! `<store>/sync.tree`) holds the synced tree as of then, so that a
//! restart asks the server only for what came after.
//!
//! ```text
//! magic "ZPSS", version u8 (3), peer id u32, applied u64, counter u64,
//! tree version u64
//! BLAKE3 hash [32] of every byte before it
//! ```
//!
//! Versions 1 and 2 held the synced tree itself, after `counter`, and are
//! still read (the next save moves the tree into the tree store):
//!
//! ```text
//! nodes list, each: fid [16], then a node as below
//! names list of (directory fid [16], name bytes, fid [16])
//! BLAKE3 hash [32] of every byte before it (version 2 only)
//! ```
//!
//! A node (here, and as the tree store keeps one): kind u8, perm u16,
//! uid u32, gid u32, rdev u32, size u64, mtime sec i64, nsec u32,
//! changed (seq u64, origin u32), renamed (seq u64, origin u32), blocks
//! list of (index u64, hash [32]), xattrs list of (name bytes, value
//! bytes), target bytes.

use super::{Reader, WireError, WireResult, Writer, count};
use crate::sync::tree::{Node, Stamp, Tree};

const MAGIC: &[u8; 4] = b"ZPSS";

pub struct PeerState {
    pub id: u32,
    pub applied: u64,
    pub counter: u64,
    pub synced: Synced,
}

/// Where the state's synced tree is.
pub enum Synced {
    /// In the tree store, at this version (0: empty).
    Stored(u64),
    /// In the state itself (versions 1 and 2).
    Inline(Box<Tree>),
}

/// A state's first bytes: magic, version, peer, applied, counter.
fn head(out: &mut Vec<u8>, version: u8, id: u32, applied: u64, counter: u64) {
    let mut w = Writer(out);
    w.bytes(MAGIC);
    w.bytes(&[version]);
    w.u32(id);
    w.u64(applied);
    w.u64(counter);
}

/// The state of version 3.
pub fn encode(id: u32, applied: u64, counter: u64, tree_version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    head(&mut out, 3, id, applied, counter);
    Writer(&mut out).u64(tree_version);
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Appends `n` as a node is written; with `blocks` false its block list
/// is left empty (the tree store keeps a big file's blocks apart).
pub fn put_node(out: &mut Vec<u8>, n: &Node, blocks: bool) -> WireResult<()> {
    let mut w = Writer(out);
    w.bytes(&[n.meta.kind.code()]);
    w.u16(n.meta.perm);
    w.u32(n.meta.uid);
    w.u32(n.meta.gid);
    w.u32(n.meta.rdev);
    w.u64(n.meta.size);
    w.u64(n.meta.mtime.sec as u64);
    w.u32(n.meta.mtime.nsec);
    for st in [n.changed, n.renamed] {
        w.u64(st.seq);
        w.u32(st.origin);
    }
    if blocks {
        w.u32(count(n.blocks.len())?);
        for (i, h) in &n.blocks {
            w.u64(*i);
            w.bytes(h);
        }
    } else {
        w.u32(0);
    }
    w.u32(count(n.xattrs.len())?);
    for (k, v) in &n.xattrs {
        w.u32(count(k.len())?);
        w.bytes(k);
        w.u32(count(v.len())?);
        w.bytes(v);
    }
    w.u32(count(n.target.len())?);
    w.bytes(&n.target);
    Ok(())
}

/// A node as [`put_node`] wrote it, from the front of `b`; returns it and
/// the bytes after it.
pub fn take_node<'a>(b: &'a [u8], what: &'static str) -> WireResult<(Node, &'a [u8])> {
    let mut r = Reader { b, what };
    let node = read_node(&mut r)?;
    Ok((node, r.b))
}

fn read_node(r: &mut Reader<'_>) -> WireResult<Node> {
    let meta = super::changeset::meta(r)?;
    let mut stamp = || -> WireResult<Stamp> {
        Ok(Stamp {
            seq: r.u64("stamp")?,
            origin: r.u32("stamp")?,
        })
    };
    let (changed, renamed) = (stamp()?, stamp()?);
    let n = r.count("blocks", 40)?;
    let mut blocks = Vec::with_capacity(n);
    for _ in 0..n {
        let i = r.u64("block")?;
        blocks.push((i, r.array("hash")?));
    }
    let mut node = Node {
        meta,
        blocks: blocks.into_iter().collect(),
        xattrs: Default::default(),
        target: Vec::new(),
        changed,
        renamed,
    };
    for _ in 0..r.count("xattrs", 8)? {
        let k = bytes(r, "xattr name")?;
        let v = bytes(r, "xattr value")?;
        node.xattrs.insert(k, v);
    }
    node.target = bytes(r, "target")?;
    Ok(node)
}

/// The state of version 2, whole: what an older version wrote, for the
/// tests of an upgrade (this version writes version 3 only).
#[doc(hidden)]
pub fn encode_v2(id: u32, applied: u64, counter: u64, synced: &Tree) -> WireResult<Vec<u8>> {
    let mut out = Vec::new();
    head(&mut out, 2, id, applied, counter);
    Writer(&mut out).u32(count(synced.nodes.len())?);
    for (fid, n) in &synced.nodes {
        out.extend_from_slice(&fid.to_le_bytes());
        put_node(&mut out, &n, true)?;
    }
    let mut w = Writer(&mut out);
    w.u32(count(synced.entries.len())?);
    for ((dir, name), fid) in &synced.entries {
        let mut w = Writer(&mut out);
        w.bytes(&dir.to_le_bytes());
        w.u32(count(name.len())?);
        w.bytes(&name);
        w.bytes(&fid.to_le_bytes());
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    Ok(out)
}

pub fn decode(b: &[u8]) -> WireResult<PeerState> {
    let mut r = Reader {
        b,
        what: "sync state",
    };
    let version = match (r.array::<4>("magic")?, r.array::<1>("version")?[0]) {
        (m, v @ (1..=3)) if m == *MAGIC => v,
        _ => return Err(r.bad("not a sync state file of this version")),
    };
    if version >= 2 {
        let Some(at) = b.len().checked_sub(32) else {
            return Err(r.bad("too short for its hash"));
        };
        let (body, hash) = b.split_at(at);
        if blake3::hash(body).as_bytes()[..] != hash[..] {
            return Err(r.bad("its hash does not match its bytes: the file is damaged"));
        }
        r.b = r.b.get(..r.b.len().saturating_sub(32)).unwrap_or_default();
    }
    let id = r.u32("peer")?;
    let applied = r.u64("applied")?;
    let counter = r.u64("counter")?;
    let synced = if version == 3 {
        Synced::Stored(r.u64("tree version")?)
    } else {
        let mut synced = Tree::default();
        let n = r.count("nodes", 16 + 1 + 2 + 12 + 8 + 12 + 24 + 12)?;
        for _ in 0..n {
            let fid = u128::from_le_bytes(r.array("fid")?);
            let node = read_node(&mut r)?;
            synced.nodes.insert(fid, node.into());
        }
        for _ in 0..r.count("names", 36)? {
            let dir = u128::from_le_bytes(r.array("directory")?);
            let name = bytes(&mut r, "name")?;
            let fid = u128::from_le_bytes(r.array("fid")?);
            synced.link((dir, name), fid);
        }
        Synced::Inline(Box::new(synced))
    };
    if !r.b.is_empty() {
        return Err(WireError::Trailing(r.b.len(), "sync state"));
    }
    Ok(PeerState {
        id,
        applied,
        counter,
        synced,
    })
}

fn bytes(r: &mut Reader<'_>, field: &'static str) -> WireResult<Vec<u8>> {
    let n = r.count(field, 1)?;
    Ok(r.take(n, field)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Kind, Time};
    use crate::sync::tree::Meta;

    fn inline(s: PeerState) -> Tree {
        match s.synced {
            Synced::Inline(t) => *t,
            Synced::Stored(v) => panic!("a tree store version ({v}) where the tree was inline"),
        }
    }

    #[test]
    fn a_peer_state_round_trips_and_damage_is_an_error() {
        let b = encode(7, 12, 40, 99);
        let s = decode(&b).unwrap();
        assert_eq!((s.id, s.applied, s.counter), (7, 12, 40));
        assert!(matches!(s.synced, Synced::Stored(99)));
        for cut in [0, 5, b.len() / 2, b.len() - 1] {
            assert!(decode(&b[..cut]).is_err(), "a state cut at {cut} decoded");
        }
        let mut more = b.clone();
        more.push(0);
        assert!(decode(&more).is_err());
        for at in [5, 20, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 0x10;
            let e = decode(&bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("damaged"), "byte {at}: {e}");
        }
    }

    /// A state of version 2 (the tree inline, checked by its hash) and of
    /// version 1 (without the hash) still read, every byte of a node with it.
    #[test]
    fn states_of_versions_1_and_2_still_read() {
        let mut t = Tree::default();
        t.nodes.insert(
            9,
            Node {
                meta: Meta {
                    kind: Kind::File,
                    perm: 0o4755,
                    uid: 1,
                    gid: 2,
                    rdev: 0,
                    size: 70_000,
                    mtime: Time { sec: -3, nsec: 5 },
                },
                blocks: [(0, [1; 32]), (7, [2; 32])].into(),
                xattrs: [(b"user.a".to_vec(), b"v".to_vec())].into(),
                target: vec![],
                changed: Stamp { seq: 4, origin: 2 },
                renamed: Stamp { seq: 3, origin: 1 },
            }
            .into(),
        );
        t.link((1, b"f".to_vec()), 9);
        t.link((1, b"hard".to_vec()), 9);
        let whole = encode_v2(7, 12, 40, &t).unwrap();
        let s = decode(&whole).unwrap();
        assert_eq!((s.id, s.applied, s.counter), (7, 12, 40));
        assert_eq!(inline(s), t);
        for at in [5, 40, whole.len() / 2, whole.len() - 40, whole.len() - 1] {
            let mut bad = whole.clone();
            bad[at] ^= 0x10;
            let e = decode(&bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("damaged") || at < 5, "byte {at}: {e}");
        }
        let mut v1 = whole[..whole.len() - 32].to_vec();
        v1[4] = 1;
        assert_eq!(inline(decode(&v1).unwrap()), t);
    }
}
