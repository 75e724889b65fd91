//! A peer's sync state on disk (`<store>/sync.state`): what it has applied
//! of the log and the synced tree, so that a restart asks the server only
//! for what came after.
//!
//! ```text
//! magic "ZPSS", version u8 (2), peer id u32, applied u64, counter u64,
//! nodes list, each: fid [16], kind u8, perm u16, uid u32, gid u32,
//!   rdev u32, size u64, mtime sec i64, nsec u32, changed (seq u64,
//!   origin u32), renamed (seq u64, origin u32), blocks list of
//!   (index u64, hash [32]), xattrs list of (name bytes, value bytes),
//!   target bytes
//! names list of (directory fid [16], name bytes, fid [16])
//! BLAKE3 hash [32] of every byte before it
//! ```
//!
//! Written a piece at a time ([`encode_to`]): the state is as large as the
//! volume's tree, and is never held whole in memory a second time to be
//! saved. Version 1 (no hash) is still read.

use super::{Reader, WireError, WireResult, Writer, count};
use crate::fs::{Kind, Time};
use crate::sync::tree::{Meta, Node, Stamp, Tree};

const MAGIC: &[u8; 4] = b"ZPSS";

pub struct PeerState {
    pub id: u32,
    pub applied: u64,
    pub counter: u64,
    pub synced: Tree,
}

/// Most bytes gathered before they go to the sink.
const CHUNK: usize = 1 << 20;

/// The state in one buffer (tests, and small states).
pub fn encode(id: u32, applied: u64, counter: u64, synced: &Tree) -> WireResult<Vec<u8>> {
    let mut out = Vec::new();
    encode_to(id, applied, counter, synced, &mut |b: &[u8]| {
        out.extend_from_slice(b);
        Ok::<(), WireError>(())
    })?;
    Ok(out)
}

/// Hands the state to `sink` in pieces of about [`CHUNK`] bytes, the hash
/// last; returns how many bytes it handed over.
pub fn encode_to<E: From<WireError>>(
    id: u32,
    applied: u64,
    counter: u64,
    synced: &Tree,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut out = Vec::with_capacity(CHUNK + 4096);
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let mut flush = |out: &mut Vec<u8>, at_least: usize| -> Result<(), E> {
        if out.len() >= at_least {
            hasher.update(out);
            sink(out)?;
            total += out.len() as u64;
            out.clear();
        }
        Ok(())
    };
    let mut w = Writer(&mut out);
    w.bytes(MAGIC);
    w.bytes(&[2]);
    w.u32(id);
    w.u64(applied);
    w.u64(counter);
    w.u32(count(synced.nodes.len())?);
    for (fid, n) in &synced.nodes {
        let mut w = Writer(&mut out);
        w.bytes(&fid.to_le_bytes());
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
        w.u32(count(n.blocks.len())?);
        for (i, h) in &n.blocks {
            w.u64(*i);
            w.bytes(h);
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
        flush(&mut out, CHUNK)?;
    }
    let mut w = Writer(&mut out);
    w.u32(count(synced.entries.len())?);
    for ((dir, name), fid) in &synced.entries {
        let mut w = Writer(&mut out);
        w.bytes(&dir.to_le_bytes());
        w.u32(count(name.len())?);
        w.bytes(&name);
        w.bytes(&fid.to_le_bytes());
        flush(&mut out, CHUNK)?;
    }
    flush(&mut out, 0)?;
    let hash = hasher.finalize();
    sink(hash.as_bytes())?;
    Ok(total + 32)
}

pub fn decode(b: &[u8]) -> WireResult<PeerState> {
    let mut r = Reader {
        b,
        what: "sync state",
    };
    let version = match (r.array::<4>("magic")?, r.array::<1>("version")?[0]) {
        (m, v @ (1 | 2)) if m == *MAGIC => v,
        _ => return Err(r.bad("not a sync state file of this version")),
    };
    if version == 2 {
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
    let mut synced = Tree::default();
    let n = r.count("nodes", 16 + 1 + 2 + 12 + 8 + 12 + 24 + 12)?;
    for _ in 0..n {
        let fid = u128::from_le_bytes(r.array("fid")?);
        let code = r.array::<1>("kind")?[0];
        let kind = Kind::from_code(code).ok_or_else(|| r.bad(format!("kind {code}")))?;
        let meta = Meta {
            kind,
            perm: r.u16("perm")?,
            uid: r.u32("uid")?,
            gid: r.u32("gid")?,
            rdev: r.u32("rdev")?,
            size: r.u64("size")?,
            mtime: Time {
                sec: r.u64("mtime")? as i64,
                nsec: r.u32("mtime")?,
            },
        };
        let mut stamp = || -> WireResult<Stamp> {
            Ok(Stamp {
                seq: r.u64("stamp")?,
                origin: r.u32("stamp")?,
            })
        };
        let (changed, renamed) = (stamp()?, stamp()?);
        let mut node = Node {
            meta,
            blocks: Default::default(),
            xattrs: Default::default(),
            target: Vec::new(),
            changed,
            renamed,
        };
        let n = r.count("blocks", 40)?;
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let i = r.u64("block")?;
            blocks.push((i, r.array("hash")?));
        }
        node.blocks = blocks.into_iter().collect();
        for _ in 0..r.count("xattrs", 8)? {
            let k = bytes(&mut r, "xattr name")?;
            let v = bytes(&mut r, "xattr value")?;
            node.xattrs.insert(k, v);
        }
        node.target = bytes(&mut r, "target")?;
        synced.nodes.insert(fid, node.into());
    }
    for _ in 0..r.count("names", 36)? {
        let dir = u128::from_le_bytes(r.array("directory")?);
        let name = bytes(&mut r, "name")?;
        let fid = u128::from_le_bytes(r.array("fid")?);
        synced.link((dir, name), fid);
    }
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

    #[test]
    fn a_peer_state_round_trips_and_damage_is_an_error() {
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
        let b = encode(7, 12, 40, &t).unwrap();
        let s = decode(&b).unwrap();
        assert_eq!((s.id, s.applied, s.counter), (7, 12, 40));
        assert_eq!(s.synced, t);
        for cut in [0, 5, b.len() / 2, b.len() - 1] {
            assert!(decode(&b[..cut]).is_err(), "a state cut at {cut} decoded");
        }
        let mut more = b.clone();
        more.push(0);
        assert!(decode(&more).is_err());
    }

    /// A state larger than a piece goes out in pieces that make the same
    /// bytes; any byte changed is found by the hash (a flipped bit in a
    /// block's hash would otherwise read as another tree); a state of
    /// version 1, without the hash, still reads.
    #[test]
    fn a_state_saved_in_pieces_is_checked_whole_and_version_1_still_reads() {
        let mut t = Tree::default();
        for f in 10..30_010u128 {
            let mut n = Node::clone(&t.nodes.get(&crate::sync::tree::ROOT_ID).expect("a root"));
            n.meta.kind = Kind::File;
            n.blocks = [(0, [f as u8; 32])].into();
            t.nodes.insert(f, n.into());
            t.link((1, f.to_string().into_bytes()), f);
        }
        let whole = encode(7, 12, 40, &t).unwrap();
        let mut pieces = 0;
        let mut joined = Vec::new();
        let n = encode_to(7, 12, 40, &t, &mut |b: &[u8]| {
            pieces += 1;
            joined.extend_from_slice(b);
            Ok::<(), WireError>(())
        })
        .unwrap();
        assert!(pieces > 2, "{pieces} pieces of {} bytes", whole.len());
        assert_eq!((joined.len() as u64, &joined), (n, &whole));
        assert_eq!(decode(&whole).unwrap().synced, t);
        for at in [5, 40, whole.len() / 2, whole.len() - 40, whole.len() - 1] {
            let mut bad = whole.clone();
            bad[at] ^= 0x10;
            let e = decode(&bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("damaged") || at < 5, "byte {at}: {e}");
        }
        let mut v1 = whole[..whole.len() - 32].to_vec();
        v1[4] = 1;
        assert_eq!(decode(&v1).unwrap().synced, t);
    }
}
