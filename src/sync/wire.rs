//! The sync protocol's frames: what a peer and the server say to each other
//! over QUIC streams. Decoding checks every length against a limit before
//! it allocates, and a body must be consumed exactly: a malformed frame is
//! an error naming what is wrong, never a panic and never a large
//! allocation.
//!
//! ## Frame
//!
//! ```text
//! off size field
//!   0    4 len: bytes that follow (kind and body), u32 LE, at least 1
//!   4    1 kind
//!   5  len-1 body
//! ```
//!
//! Integers are little-endian. In bodies, a string is `u16 length` and
//! UTF-8 bytes; a byte string is `u32 length` and bytes; a list is
//! `u32 count` and its items. Counts and lengths are checked against the
//! bytes left before anything is allocated.
//!
//! ## Messages (kind: body)
//!
//! ```text
//! 1 Hello    magic "ZPSY", proto_min u16, proto_max u16, volume str,
//!            credential str, store id [16], last applied sequence u64
//!            (client, first frame on its stream)
//! 2 Welcome  proto u16, server id [16], peer id u32, peer name str,
//!            volume head sequence u64, and from protocol 4 the last push
//!            taken from this peer: counter u64, sequence u64 (0, 0: none
//!            known); then the change-sets after the peer's last applied
//!            one follow as Deliver
//! 3 Refuse   code u16, reason str (then the server closes the connection):
//!            1 protocol versions, 2 credential, 3 volume not allowed,
//!            4 the peer is ahead of the log, 5 the server ended a
//!            connection on an error (its store's, say a full disk, or
//!            the peer's fault); the peer connects again later
//! 4 Push     change-set (client: one local commit, or several folded)
//! 5 Deliver  sequence u64, change-set (server: the log, in order)
//! 6 Ack      counter u64, sequence u64, time i64 (server: push `counter`
//!            is durable as `sequence`, taken at `time`)
//! 7 Want     list of (hash [32], base [32]) (either side: the blocks it
//!            lacks of a Push or a Deliver; a base not all zeros names a
//!            block the asker has at the same place, which the answer may
//!            be a Patch against)
//! 8 Block    hash [32], data bytes (the receiver checks BLAKE3(data) = hash)
//! 9 Patch    a block as the runs that differ from a base (`patch.rs`);
//!            the receiver rebuilds it and checks its hash, and asks for
//!            it whole (a Want without base) if it cannot
//! 10 Snapshot sequence u64, last u8 (0/1), change-set, stamps list of
//!            (fid [16], changed seq u64, changed origin u32, renamed seq
//!            u64, renamed origin u32) (server: one part of the volume as of
//!            `sequence`, sent in place of the log up to there when the
//!            server has cut it and the peer is behind the cut; the parts
//!            follow Welcome, the log after `sequence` follows the last
//!            part; `snapshot.rs` says what the change-set holds)
//! ```
//!
//! A change-set's encoding is in `wire/changeset.rs`.
//!
//! Limits per kind (the body's bytes): Hello, Welcome, Refuse 4 KiB; Push
//! and Deliver 64 MiB; Want 2 MiB (32,768 hashes: more are asked in
//! several); Block the largest block (1 MiB) and its header; Patch that,
//! and 8 bytes a run of at least 512 bytes; Ack 24 bytes; Snapshot a
//! change-set and [`MAX_STAMPS`] stamps.

mod bytes;
mod changeset;
pub mod state;

use bytes::{Reader, Writer, count};

use thiserror::Error;

use super::patch::Patch;
use super::tree::{ChangeSet, Stamp};

/// The protocol versions this build speaks.
/// 2: Want names a base, and a block may come as a Patch.
/// 3: the server may cut its log and send a Snapshot in its place.
/// 4: Welcome names the last push the server took from the peer.
pub const PROTO_MIN: u16 = 3;
pub const PROTO_MAX: u16 = 4;
const MAGIC: [u8; 4] = *b"ZPSY";
/// Bytes before a frame's body: `len` and `kind`.
pub const HEADER: usize = 5;
const SMALL: usize = 4 << 10;
/// The largest change-set, encoded.
pub const MAX_CHANGESET: usize = 64 << 20;
/// The most hashes one Want asks for.
pub const MAX_WANT: usize = 32_768;
/// The largest data block a filesystem has.
pub const MAX_BLOCK: usize = crate::fs::MAX_BLOCK as usize;
/// The most files one Snapshot part carries stamps of.
pub const MAX_STAMPS: usize = 1 << 16;
const STAMP: usize = 16 + 12 + 12;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{what} frame of {len} bytes, over its limit of {limit}")]
    TooLong {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("empty frame (no kind)")]
    Empty,
    #[error("{what} frame ends early, reading {field}")]
    Short {
        what: &'static str,
        field: &'static str,
    },
    #[error("{what} frame has {0} bytes left over", what = .1)]
    Trailing(usize, &'static str),
    #[error("{what} frame: {why}")]
    Bad { what: &'static str, why: String },
}

pub type WireResult<T> = Result<T, WireError>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Hello {
        proto_min: u16,
        proto_max: u16,
        volume: String,
        credential: String,
        store_id: [u8; 16],
        last_applied: u64,
    },
    Welcome {
        proto: u16,
        server_id: [u8; 16],
        peer: u32,
        peer_name: String,
        head: u64,
        /// The last push the server took from this peer: (counter,
        /// sequence); (0, 0) if none is known or before protocol 4.
        taken: (u64, u64),
    },
    Refuse {
        code: u16,
        reason: String,
    },
    Push(ChangeSet),
    Deliver {
        seq: u64,
        cs: ChangeSet,
    },
    Ack {
        counter: u64,
        seq: u64,
        time: i64,
    },
    Want {
        wants: Vec<Wanted>,
    },
    Block {
        hash: [u8; 32],
        data: Vec<u8>,
    },
    Patch {
        hash: [u8; 32],
        base: [u8; 32],
        patch: Patch,
    },
    Snapshot {
        seq: u64,
        last: bool,
        cs: ChangeSet,
        /// Each file's stamps: (fid, changed, renamed).
        stamps: Vec<(u128, Stamp, Stamp)>,
    },
}

/// A block asked for, and the one the asker has in its place, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub hash: [u8; 32],
    pub base: Option<[u8; 32]>,
}

impl Wanted {
    pub fn whole(hash: [u8; 32]) -> Wanted {
        Wanted { hash, base: None }
    }
}

/// (name, limit on the body's bytes) of each kind.
fn kind_info(kind: u8) -> WireResult<(&'static str, usize)> {
    Ok(match kind {
        1 => ("Hello", SMALL),
        2 => ("Welcome", SMALL),
        3 => ("Refuse", SMALL),
        4 => ("Push", MAX_CHANGESET),
        5 => ("Deliver", 8 + MAX_CHANGESET),
        6 => ("Ack", 24),
        7 => ("Want", 4 + 64 * MAX_WANT),
        8 => ("Block", 32 + 4 + MAX_BLOCK),
        9 => ("Patch", 64 + 8 + MAX_BLOCK + MAX_BLOCK / 64),
        10 => ("Snapshot", 9 + MAX_CHANGESET + 4 + STAMP * MAX_STAMPS),
        k => return Err(WireError::UnknownKind(k)),
    })
}

/// Reads a frame header: (kind, body length), checked against the kind's
/// limit, so the caller may allocate the body.
pub fn header(h: &[u8; HEADER]) -> WireResult<(u8, usize)> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let body = len.checked_sub(1).ok_or(WireError::Empty)?;
    let kind = h[4];
    let (what, limit) = kind_info(kind)?;
    if body > limit {
        return Err(WireError::TooLong {
            what,
            len: body,
            limit,
        });
    }
    Ok((kind, body))
}

impl Msg {
    /// The kind's name (for logs and errors).
    pub fn name(&self) -> &'static str {
        kind_info(self.kind()).map_or("?", |(name, _)| name)
    }

    fn kind(&self) -> u8 {
        match self {
            Msg::Hello { .. } => 1,
            Msg::Welcome { .. } => 2,
            Msg::Refuse { .. } => 3,
            Msg::Push(_) => 4,
            Msg::Deliver { .. } => 5,
            Msg::Ack { .. } => 6,
            Msg::Want { .. } => 7,
            Msg::Block { .. } => 8,
            Msg::Patch { .. } => 9,
            Msg::Snapshot { .. } => 10,
        }
    }

    /// Appends the whole frame to `out`; fails (writing nothing) if the
    /// message is over its kind's limit.
    pub fn encode(&self, out: &mut Vec<u8>) -> WireResult<()> {
        let mut body = Vec::new();
        let mut w = Writer(&mut body);
        match self {
            Msg::Hello {
                proto_min,
                proto_max,
                volume,
                credential,
                store_id,
                last_applied,
            } => {
                w.bytes(&MAGIC);
                w.u16(*proto_min);
                w.u16(*proto_max);
                w.str(volume)?;
                w.str(credential)?;
                w.bytes(store_id);
                w.u64(*last_applied);
            }
            Msg::Welcome {
                proto,
                server_id,
                peer,
                peer_name,
                head,
                taken,
            } => {
                w.u16(*proto);
                w.bytes(server_id);
                w.u32(*peer);
                w.str(peer_name)?;
                w.u64(*head);
                if *proto >= 4 {
                    w.u64(taken.0);
                    w.u64(taken.1);
                }
            }
            Msg::Refuse { code, reason } => {
                w.u16(*code);
                w.str(reason)?;
            }
            Msg::Push(cs) => changeset::put(&mut w, cs)?,
            Msg::Deliver { seq, cs } => {
                w.u64(*seq);
                changeset::put(&mut w, cs)?;
            }
            Msg::Ack { counter, seq, time } => {
                w.u64(*counter);
                w.u64(*seq);
                w.u64(*time as u64);
            }
            Msg::Want { wants } => {
                w.u32(count(wants.len())?);
                for x in wants {
                    w.bytes(&x.hash);
                    w.bytes(&x.base.unwrap_or([0; 32]));
                }
            }
            Msg::Block { hash, data } => {
                w.bytes(hash);
                w.u32(count(data.len())?);
                w.bytes(data);
            }
            Msg::Patch { hash, base, patch } => {
                w.bytes(hash);
                w.bytes(base);
                w.u32(patch.len);
                w.u32(count(patch.runs.len())?);
                for (off, data) in &patch.runs {
                    w.u32(*off);
                    w.u32(count(data.len())?);
                    w.bytes(data);
                }
            }
            Msg::Snapshot {
                seq,
                last,
                cs,
                stamps,
            } => {
                w.u64(*seq);
                w.bytes(&[*last as u8]);
                changeset::put(&mut w, cs)?;
                if stamps.len() > MAX_STAMPS {
                    return Err(WireError::Bad {
                        what: "Snapshot",
                        why: format!("{} stamps in one part", stamps.len()),
                    });
                }
                w.u32(count(stamps.len())?);
                for (fid, c, r) in stamps {
                    w.bytes(&fid.to_le_bytes());
                    for st in [c, r] {
                        w.u64(st.seq);
                        w.u32(st.origin);
                    }
                }
            }
        }
        let kind = self.kind();
        let (what, limit) = kind_info(kind)?;
        if body.len() > limit {
            return Err(WireError::TooLong {
                what,
                len: body.len(),
                limit,
            });
        }
        out.extend_from_slice(&count(body.len() + 1)?.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Decodes the body of a frame of `kind` (as [`header`] read it).
    pub fn decode(kind: u8, body: &[u8]) -> WireResult<Msg> {
        let (what, limit) = kind_info(kind)?;
        if body.len() > limit {
            return Err(WireError::TooLong {
                what,
                len: body.len(),
                limit,
            });
        }
        let mut r = Reader { b: body, what };
        let m = match kind {
            1 => {
                if r.array::<4>("magic")? != MAGIC {
                    return Err(r.bad("not a zippyfs sync peer (bad magic)"));
                }
                let proto_min = r.u16("proto_min")?;
                let proto_max = r.u16("proto_max")?;
                if proto_min > proto_max {
                    return Err(r.bad(format!("versions {proto_min} to {proto_max}")));
                }
                Msg::Hello {
                    proto_min,
                    proto_max,
                    volume: r.str("volume")?,
                    credential: r.str("credential")?,
                    store_id: r.array("store id")?,
                    last_applied: r.u64("last applied")?,
                }
            }
            2 => {
                let proto = r.u16("proto")?;
                let server_id = r.array("server id")?;
                let peer = r.u32("peer")?;
                let peer_name = r.str("peer name")?;
                let head = r.u64("head")?;
                let taken = if proto >= 4 {
                    (r.u64("taken counter")?, r.u64("taken sequence")?)
                } else {
                    (0, 0)
                };
                Msg::Welcome {
                    proto,
                    server_id,
                    peer,
                    peer_name,
                    head,
                    taken,
                }
            }
            3 => Msg::Refuse {
                code: r.u16("code")?,
                reason: r.str("reason")?,
            },
            4 => Msg::Push(changeset::get(&mut r)?),
            5 => Msg::Deliver {
                seq: r.u64("seq")?,
                cs: changeset::get(&mut r)?,
            },
            6 => Msg::Ack {
                counter: r.u64("counter")?,
                seq: r.u64("seq")?,
                time: r.u64("time")? as i64,
            },
            7 => Msg::Want {
                wants: r.list("wants", 64, |r| {
                    let hash = r.array("hash")?;
                    let base: [u8; 32] = r.array("base")?;
                    Ok(Wanted {
                        hash,
                        base: (base != [0; 32]).then_some(base),
                    })
                })?,
            },
            8 => {
                let hash = r.array("hash")?;
                let n = r.count("data", 1)?;
                Msg::Block {
                    hash,
                    data: r.take(n, "data")?.to_vec(),
                }
            }
            9 => Msg::Patch {
                hash: r.array("hash")?,
                base: r.array("base")?,
                patch: Patch {
                    len: r.u32("len")?,
                    runs: r.list("runs", 8, |r| {
                        let off = r.u32("offset")?;
                        let n = r.count("run", 1)?;
                        Ok((off, r.take(n, "run")?.to_vec()))
                    })?,
                },
            },
            10 => {
                let seq = r.u64("seq")?;
                let last = match r.array::<1>("last")?[0] {
                    0 => false,
                    1 => true,
                    b => return Err(r.bad(format!("last is {b}"))),
                };
                let cs = changeset::get(&mut r)?;
                let stamps = r.list("stamps", STAMP, |r| {
                    let fid = u128::from_le_bytes(r.array("fid")?);
                    let mut st = [Stamp::default(); 2];
                    for s in &mut st {
                        s.seq = r.u64("stamp seq")?;
                        s.origin = r.u32("stamp origin")?;
                    }
                    Ok((fid, st[0], st[1]))
                })?;
                if stamps.len() > MAX_STAMPS {
                    return Err(r.bad(format!("{} stamps in one part", stamps.len())));
                }
                Msg::Snapshot {
                    seq,
                    last,
                    cs,
                    stamps,
                }
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        if !r.b.is_empty() {
            return Err(WireError::Trailing(r.b.len(), what));
        }
        Ok(m)
    }

    /// Decodes one whole frame from the start of `buf`; returns the
    /// message and the bytes it took, or `None` if `buf` holds less than a
    /// whole frame so far.
    pub fn decode_frame(buf: &[u8]) -> WireResult<Option<(Msg, usize)>> {
        let Some(h) = buf.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let (kind, len) = header(h)?;
        let Some(body) = buf.get(HEADER..HEADER + len) else {
            return Ok(None);
        };
        Ok(Some((Msg::decode(kind, body)?, HEADER + len)))
    }
}

#[cfg(test)]
mod tests;
