//! The tree store's keys and values: how a tree's three maps, and a big
//! file's blocks, are written into the store and read back.
//!
//! Keys (integers big-endian, so that the store's order is the maps'):
//!
//! ```text
//! "N" fid [16]             a node as `wire/state.rs` writes one, then a
//!                          byte: 0 its blocks are in it, 1 its block list
//!                          is empty there and its blocks are under "B"
//! "B" fid [16] chunk [8]   the blocks of indices chunk * 1024 to
//!                          chunk * 1024 + 1023, each (index u64 LE,
//!                          hash [32]), in index order
//! "E" dir [16] name        the file id [16] the entry names
//! "A" fid [16]             the file's names, each (directory [16],
//!                          name length u32 LE, name)
//! "#"                      how many nodes, entries and files with names
//!                          (u64 LE each)
//! "L" key                  a change of the local tree moved out of memory
//!                          (`TreeStore::spill`), keyed as above ("LN",
//!                          "LB", "LE", "LA"): a byte, 0 the key is gone
//!                          from the local tree, 1 its value follows,
//!                          as above ("LB" chunks have no such byte: they
//!                          are a spilled node's blocks, as "B" ones are). Scratch: a mount reads its local tree
//!                          again, and drops these first.
//! ```
//!

use std::sync::Arc;

use super::super::{FileId, Key, Names, Node};
use crate::fs::inode::prefix_end;
use crate::store::{Snapshot, StoreResult, WriteTxn};
use crate::sync::SyncError;
use crate::sync::wire::state::{put_node, take_node};

/// The most blocks a node keeps in its own value; a bigger file's go in
/// chunks of their own, so no value grows with a file.
pub(super) const INLINE_BLOCKS: usize = 1024;
const CHUNK_SHIFT: u32 = 10;

pub(super) const COUNTS: &[u8] = b"#";

pub(super) fn node_key(fid: FileId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'N');
    k.extend_from_slice(&fid.to_be_bytes());
    k
}

pub(super) fn chunk_prefix(fid: FileId) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(b'B');
    k.extend_from_slice(&fid.to_be_bytes());
    k
}

pub(super) fn entry_key(k: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + k.1.len());
    out.push(b'E');
    out.extend_from_slice(&k.0.to_be_bytes());
    out.extend_from_slice(&k.1);
    out
}

pub(super) fn names_key(fid: FileId) -> Vec<u8> {
    let mut k = node_key(fid);
    k[0] = b'A';
    k
}

pub(super) fn fid_at(b: &[u8]) -> Result<FileId, String> {
    b.get(..16)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| "a key too short for a file id".to_string())
}

pub(super) fn fid_le(b: &[u8]) -> Result<FileId, String> {
    <[u8; 16]>::try_from(b)
        .map(u128::from_le_bytes)
        .map_err(|_| format!("a file id of {} bytes", b.len()))
}

pub(super) fn node_value(n: &Node) -> Result<(Vec<u8>, bool), SyncError> {
    let chunked = n.blocks.len() > INLINE_BLOCKS;
    let mut v = Vec::with_capacity(96 + if chunked { 0 } else { n.blocks.len() * 40 });
    put_node(&mut v, n, !chunked).map_err(|e| SyncError::Config(e.to_string()))?;
    v.push(chunked as u8);
    Ok((v, chunked))
}

/// Where the local tree's spilled changes are (see the keys above).
pub(super) const SPILLED: &[u8] = b"L";

/// `key` of a spilled change.
pub(super) fn spilled(key: Vec<u8>) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(SPILLED);
    k.extend_from_slice(&key);
    k
}

/// A spilled change's value: gone, or `value`.
pub(super) fn spilled_value(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(1);
            out.extend_from_slice(v);
            out
        }
    }
}

/// A spilled change's value read: gone (`None`), or the value's bytes.
fn spilled_bytes(v: &[u8]) -> Result<Option<&[u8]>, String> {
    match v.split_first() {
        Some((0, [])) => Ok(None),
        Some((1, rest)) => Ok(Some(rest)),
        _ => Err(format!("a spilled change of {} bytes", v.len())),
    }
}

pub(super) fn read_node(
    snap: &Snapshot<'_>,
    fid: FileId,
    v: &[u8],
    spill: bool,
) -> Result<Node, String> {
    let (mut n, rest) = take_node(v, "stored node").map_err(|e| e.to_string())?;
    match rest {
        [0] => Ok(n),
        [1] => {
            let mut prefix = chunk_prefix(fid);
            if spill {
                prefix = spilled(prefix);
            }
            let mut blocks = Vec::new();
            let range = snap
                .range(&prefix[..]..&prefix_end(&prefix)[..])
                .map_err(|e| e.to_string())?;
            for item in range {
                let (_, e) = item.map_err(|e| e.to_string())?;
                if e.value.len() % 40 != 0 {
                    return Err(format!("a block chunk of {} bytes", e.value.len()));
                }
                for b in e.value.chunks_exact(40) {
                    let (i, h) = b.split_at(8);
                    let i = u64::from_le_bytes(i.try_into().map_err(|_| "an index")?);
                    blocks.push((i, h.try_into().map_err(|_| "a hash")?));
                }
            }
            n.blocks = blocks.into_iter().collect();
            Ok(n)
        }
        _ => Err(format!("{} bytes after a node", rest.len())),
    }
}

pub(super) fn names_value(names: &Names) -> Vec<u8> {
    let mut v = Vec::new();
    for (dir, name) in names {
        v.extend_from_slice(&dir.to_le_bytes());
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(name);
    }
    v
}

pub(super) fn read_names(mut b: &[u8]) -> Result<Names, String> {
    let mut names = Names::default();
    while !b.is_empty() {
        let (dir, rest) = b.split_at_checked(16).ok_or("a name cut short")?;
        let (len, rest) = rest.split_at_checked(4).ok_or("a name cut short")?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| "a length")?) as usize;
        let (name, rest) = rest.split_at_checked(len).ok_or("a name cut short")?;
        names.insert((fid_le(dir)?, name.to_vec()));
        b = rest;
    }
    Ok(names)
}

pub(super) fn decode_node(
    snap: &Snapshot<'_>,
    k: &[u8],
    v: &[u8],
) -> Result<(FileId, Arc<Node>), String> {
    let fid = fid_at(k)?;
    Ok((fid, Arc::new(read_node(snap, fid, v, false)?)))
}

pub(super) fn decode_spilled_node(
    snap: &Snapshot<'_>,
    k: &[u8],
    v: &[u8],
) -> Result<(FileId, Option<Arc<Node>>), String> {
    let fid = fid_at(k)?;
    let n = match spilled_bytes(v)? {
        Some(v) => Some(Arc::new(read_node(snap, fid, v, true)?)),
        None => None,
    };
    Ok((fid, n))
}

pub(super) fn decode_spilled_entry(
    snap: &Snapshot<'_>,
    k: &[u8],
    v: &[u8],
) -> Result<(Key, Option<FileId>), String> {
    match spilled_bytes(v)? {
        Some(v) => decode_entry(snap, k, v).map(|(k, f)| (k, Some(f))),
        None => Ok(((fid_at(k)?, k[16..].to_vec()), None)),
    }
}

pub(super) fn decode_spilled_names(
    _: &Snapshot<'_>,
    k: &[u8],
    v: &[u8],
) -> Result<(FileId, Option<Names>), String> {
    let names = match spilled_bytes(v)? {
        Some(v) => Some(read_names(v)?),
        None => None,
    };
    Ok((fid_at(k)?, names))
}

pub(super) fn decode_entry(_: &Snapshot<'_>, k: &[u8], v: &[u8]) -> Result<(Key, FileId), String> {
    let dir = fid_at(k)?;
    Ok(((dir, k[16..].to_vec()), fid_le(v)?))
}

pub(super) fn decode_names(
    _: &Snapshot<'_>,
    k: &[u8],
    v: &[u8],
) -> Result<(FileId, Names), String> {
    Ok((fid_at(k)?, read_names(v)?))
}

pub(super) fn delete_prefix(txn: &mut WriteTxn<'_>, prefix: &[u8]) -> StoreResult<()> {
    let keys: Vec<Vec<u8>> = txn
        .range(prefix..&prefix_end(prefix)[..])?
        .map(|r| r.map(|(k, _)| k.to_vec()))
        .collect::<StoreResult<_>>()?;
    for k in keys {
        txn.delete(&k)?;
    }
    Ok(())
}

/// Puts file `fid`'s node (`None`: deletes it), its blocks apart if many.
pub(super) fn put_file_node(
    txn: &mut WriteTxn<'_>,
    fid: FileId,
    n: Option<&Node>,
) -> Result<(), SyncError> {
    delete_prefix(txn, &chunk_prefix(fid))?;
    let Some(n) = n else {
        txn.delete(&node_key(fid))?;
        return Ok(());
    };
    let (v, chunked) = node_value(n)?;
    txn.put(&node_key(fid), &v)?;
    if chunked {
        put_chunks(txn, fid, n, false)?;
    }
    Ok(())
}

/// Puts a spilled change of file `fid`'s node: `None` drops it (the
/// local tree has the base's again), `Some(None)` says it is gone.
pub(super) fn put_spilled_node(
    txn: &mut WriteTxn<'_>,
    fid: FileId,
    n: Option<Option<&Node>>,
) -> Result<(), SyncError> {
    delete_prefix(txn, &spilled(chunk_prefix(fid)))?;
    let key = spilled(node_key(fid));
    match n {
        None => {
            txn.delete(&key)?;
        }
        Some(None) => txn.put(&key, &spilled_value(None))?,
        Some(Some(n)) => {
            let (v, chunked) = node_value(n)?;
            txn.put(&key, &spilled_value(Some(&v)))?;
            if chunked {
                put_chunks(txn, fid, n, true)?;
            }
        }
    }
    Ok(())
}

/// The blocks of a node too big for its value, in chunks of their own.
fn put_chunks(txn: &mut WriteTxn<'_>, fid: FileId, n: &Node, spill: bool) -> Result<(), SyncError> {
    let mut chunk: Vec<u8> = Vec::new();
    let mut at = None;
    let flush = |txn: &mut WriteTxn<'_>, at: u64, chunk: &mut Vec<u8>| {
        let mut k = chunk_prefix(fid);
        if spill {
            k = spilled(k);
        }
        k.extend_from_slice(&at.to_be_bytes());
        let r = txn.put(&k, chunk);
        chunk.clear();
        r
    };
    for (i, h) in &n.blocks {
        let c = i >> CHUNK_SHIFT;
        if let Some(a) = at
            && a != c
        {
            flush(txn, a, &mut chunk)?;
        }
        at = Some(c);
        chunk.extend_from_slice(&i.to_le_bytes());
        chunk.extend_from_slice(h);
    }
    if let Some(a) = at {
        flush(txn, a, &mut chunk)?;
    }
    Ok(())
}
