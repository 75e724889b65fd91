//! A change-set in a Push or Deliver body.
//!
//! ```text
//! origin u32, origin name str, counter u64, base u64, time i64,
//! ops list, each:
//!   1 Node   fid [16], whole u8 (0/1), meta, cut (u8 0/1, u64),
//!            blocks list of (index u64, u8 0 hole / 1 then hash [32]),
//!            xattrs list of (name bytes, u8 0 removed / 1 then value bytes),
//!            target (u8 0 unchanged / 1 then bytes)
//!   2 Names  fid [16], removed list of key, added list of key
//! meta: kind u8 (the inode record's codes), perm u16, uid u32, gid u32,
//!       rdev u32, size u64, mtime sec i64, mtime nsec u32
//! key:  directory fid [16], name bytes
//! ```
//!
//! Decoding checks what the tree relies on: kinds are known, names are
//! names (1 to 255 bytes, no `/` or NUL, not `.` or `..`), xattr names and
//! values and symlink targets are within the filesystem's limits,
//! nanoseconds are below a second.

use super::{Reader, WireResult, Writer, count};
use crate::fs::{Kind, Time};
use crate::sync::apply::good_name;
use crate::sync::tree::{ChangeSet, Key, Meta, Op};

const XATTR_NAME_MAX: usize = 255;
const XATTR_VALUE_MAX: usize = 64 << 10;
const TARGET_MAX: usize = 4096;

pub(super) fn put(w: &mut Writer<'_>, cs: &ChangeSet) -> WireResult<()> {
    w.u32(cs.origin);
    w.str(&cs.origin_name)?;
    w.u64(cs.counter);
    w.u64(cs.base);
    w.u64(cs.time as u64);
    w.u32(count(cs.ops.len())?);
    for op in &cs.ops {
        match op {
            Op::Node {
                fid,
                whole,
                meta,
                cut,
                blocks,
                xattrs,
                target,
            } => {
                w.bytes(&[1]);
                w.bytes(&fid.to_le_bytes());
                w.bytes(&[*whole as u8, meta.kind.code()]);
                w.u16(meta.perm);
                w.u32(meta.uid);
                w.u32(meta.gid);
                w.u32(meta.rdev);
                w.u64(meta.size);
                w.u64(meta.mtime.sec as u64);
                w.u32(meta.mtime.nsec);
                w.bytes(&[cut.is_some() as u8]);
                w.u64(cut.unwrap_or(0));
                w.u32(count(blocks.len())?);
                for (i, h) in blocks {
                    w.u64(*i);
                    match h {
                        Some(h) => {
                            w.bytes(&[1]);
                            w.bytes(h);
                        }
                        None => w.bytes(&[0]),
                    }
                }
                w.u32(count(xattrs.len())?);
                for (k, v) in xattrs {
                    w.u32(count(k.len())?);
                    w.bytes(k);
                    match v {
                        Some(v) => {
                            w.bytes(&[1]);
                            w.u32(count(v.len())?);
                            w.bytes(v);
                        }
                        None => w.bytes(&[0]),
                    }
                }
                match target {
                    Some(t) => {
                        w.bytes(&[1]);
                        w.u32(count(t.len())?);
                        w.bytes(t);
                    }
                    None => w.bytes(&[0]),
                }
            }
            Op::Names {
                fid,
                removed,
                added,
            } => {
                w.bytes(&[2]);
                w.bytes(&fid.to_le_bytes());
                for keys in [removed, added] {
                    w.u32(count(keys.len())?);
                    for (dir, name) in keys {
                        w.bytes(&dir.to_le_bytes());
                        w.u32(count(name.len())?);
                        w.bytes(name);
                    }
                }
            }
        }
    }
    Ok(())
}

pub(super) fn get(r: &mut Reader<'_>) -> WireResult<ChangeSet> {
    let origin = r.u32("origin")?;
    let origin_name = r.str("origin name")?;
    let counter = r.u64("counter")?;
    let base = r.u64("base")?;
    let time = r.u64("time")? as i64;
    // The smallest op is a Names op with two empty lists: 25 bytes.
    let n = r.count("ops", 25)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        ops.push(match r.array::<1>("op")?[0] {
            1 => node(r)?,
            2 => Op::Names {
                fid: u128::from_le_bytes(r.array("fid")?),
                removed: keys(r)?,
                added: keys(r)?,
            },
            t => return Err(r.bad(format!("unknown op {t}"))),
        });
    }
    Ok(ChangeSet {
        origin,
        origin_name,
        counter,
        base,
        time,
        ops,
    })
}

fn flag(r: &mut Reader<'_>, field: &'static str) -> WireResult<bool> {
    match r.array::<1>(field)?[0] {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(r.bad(format!("{field} is {b}, not 0 or 1"))),
    }
}

/// A byte string of at most `max` bytes.
fn bytes(r: &mut Reader<'_>, field: &'static str, max: usize) -> WireResult<Vec<u8>> {
    let n = r.count(field, 1)?;
    if n > max {
        return Err(r.bad(format!("{field} of {n} bytes, over {max}")));
    }
    Ok(r.take(n, field)?.to_vec())
}

/// A file's meta: kind u8, perm u16 (its low 12 bits), uid u32, gid u32,
/// rdev u32, size u64, mtime sec i64, nsec u32; checked against what a
/// file can be (the sync state's nodes are read by it too).
pub(super) fn meta(r: &mut Reader<'_>) -> WireResult<Meta> {
    let code = r.array::<1>("kind")?[0];
    let kind = Kind::from_code(code).ok_or_else(|| r.bad(format!("unknown kind {code}")))?;
    let meta = Meta {
        kind,
        perm: r.u16("perm")? & 0o7777,
        uid: r.u32("uid")?,
        gid: r.u32("gid")?,
        rdev: r.u32("rdev")?,
        size: r.u64("size")?,
        mtime: Time {
            sec: r.u64("mtime")? as i64,
            nsec: r.u32("mtime")?,
        },
    };
    if meta.mtime.nsec >= 1_000_000_000 || meta.size > crate::fs::MAX_FILE_SIZE {
        return Err(r.bad("mtime nanoseconds or size out of range"));
    }
    Ok(meta)
}

fn node(r: &mut Reader<'_>) -> WireResult<Op> {
    let fid = u128::from_le_bytes(r.array("fid")?);
    let whole = flag(r, "whole")?;
    let meta = meta(r)?;
    let has_cut = flag(r, "cut")?;
    let cut = r.u64("cut")?;
    let cut = has_cut.then_some(cut);
    let n = r.count("blocks", 9)?;
    let mut blocks = Vec::with_capacity(n);
    for _ in 0..n {
        let i = r.u64("block index")?;
        let h = if flag(r, "block")? {
            Some(r.array("block hash")?)
        } else {
            None
        };
        blocks.push((i, h));
    }
    let n = r.count("xattrs", 5)?;
    let mut xattrs = Vec::with_capacity(n);
    for _ in 0..n {
        let k = bytes(r, "xattr name", XATTR_NAME_MAX)?;
        if k.is_empty() || k.contains(&0) {
            return Err(r.bad("an empty xattr name or one with NUL"));
        }
        let v = if flag(r, "xattr")? {
            Some(bytes(r, "xattr value", XATTR_VALUE_MAX)?)
        } else {
            None
        };
        xattrs.push((k, v));
    }
    let target = if flag(r, "target")? {
        Some(bytes(r, "target", TARGET_MAX)?)
    } else {
        None
    };
    Ok(Op::Node {
        fid,
        whole,
        meta,
        cut,
        blocks,
        xattrs,
        target,
    })
}

fn keys(r: &mut Reader<'_>) -> WireResult<Vec<Key>> {
    let n = r.count("keys", 20)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let dir = u128::from_le_bytes(r.array("directory")?);
        let name = bytes(r, "name", crate::fs::NAME_MAX)?;
        if !good_name(&name) {
            return Err(r.bad(format!("bad name {:?}", String::from_utf8_lossy(&name))));
        }
        out.push((dir, name));
    }
    Ok(out)
}
