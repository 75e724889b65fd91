//! One peer's connection: the handshake (credential, volume, protocol),
//! then its messages: its pushes taken, the log and the blocks it asks
//! for streamed to it, and why the connection ended told to it.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::watch;

use super::peers::credential_hash;
use super::{
    Full, PeerEntry, State, block_key, counter_key, cut, cut_if_due, hashes_of, last_taken,
    load_peers, log_key,
};
use crate::sync::stream::{Counted, Outbox, read_msg, reader, send_msg};
use crate::sync::tree::{ChangeSet, Hash};
use crate::sync::wire::{MAX_BLOCK, MAX_WANT, Msg, PROTO_MAX, PROTO_MIN, Wanted};
use crate::sync::{SyncError, hex};

/// A push waiting for its blocks.
struct Pending {
    cs: ChangeSet,
    missing: HashSet<Hash>,
    got: Vec<(Hash, Vec<u8>)>,
}

pub(super) async fn connection(
    st: &Rc<State>,
    incoming: quinn::Incoming,
    bytes: &Arc<Counted>,
) -> Result<(), SyncError> {
    let conn = incoming.await.map_err(|e| SyncError::Net(e.to_string()))?;
    st.totals.borrow_mut().connections += 1;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| SyncError::Net(e.to_string()))?;
    let Some(Msg::Hello {
        proto_min,
        proto_max,
        volume,
        credential,
        last_applied,
        ..
    }) = read_msg(&mut recv, bytes).await?
    else {
        return Err(SyncError::Protocol("the first frame is not Hello".into()));
    };
    let refuse = |code: u16, reason: String| Msg::Refuse { code, reason };
    let hash = credential_hash(&credential);
    let peers = load_peers(&st.dir)?;
    let verdict = if proto_max < PROTO_MIN || proto_min > PROTO_MAX {
        Err(refuse(
            1,
            format!(
                "protocol {proto_min}..{proto_max}; this server speaks {PROTO_MIN}..{PROTO_MAX}"
            ),
        ))
    } else {
        match peers.iter().find(|p| p.hash == hash) {
            None => Err(refuse(2, "unknown or revoked credential".into())),
            Some(p) if p.volume != volume => Err(refuse(
                3,
                format!("peer {} may not use volume {volume:?}", p.name),
            )),
            Some(p) => Ok(p.clone()),
        }
    };
    let peer = match verdict {
        Ok(p) => p,
        Err(m) => {
            send_msg(&mut send, &m, bytes).await?;
            let _ = send.finish();
            // Give the refusal time to arrive before the connection goes.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            return Err(SyncError::Refused(format!("{m:?}")));
        }
    };
    let mut heads = st.head(&volume)?;
    let head = *heads.borrow_and_update();
    if last_applied > head {
        let m = refuse(
            4,
            format!(
                "the peer has applied sequence {last_applied} of {volume:?}, which ends at {head}: \
                 another server or volume?"
            ),
        );
        send_msg(&mut send, &m, bytes).await?;
        let _ = send.finish();
        return Err(SyncError::Refused(format!("{m:?}")));
    }
    tracing::info!(peer = %peer.name, volume = %volume, last_applied, head, "peer connected");
    send_msg(
        &mut send,
        &Msg::Welcome {
            proto: PROTO_MAX.min(proto_max),
            server_id: st.server_id,
            peer: peer.id,
            peer_name: peer.name.clone(),
            head,
            taken: last_taken(st, &volume, peer.id)?,
        },
        bytes,
    )
    .await?;
    let out = Outbox::new(send, bytes.clone());
    let rx = reader(recv, bytes.clone(), 64);
    let mut c = Conn {
        st,
        volume: &volume,
        peer: &peer,
        out: &out,
        sent: last_applied,
        pending: None,
        owed: VecDeque::new(),
        ack: None,
        snapshot: None,
    };
    let r = c.run(rx, heads).await;
    drop(c);
    if let Err(e) = &r {
        // The peer learns why: "connection lost" would hide a full disk
        // here as well as the peer's own fault. It tries again later.
        let reason = match e {
            SyncError::Net(_) => None,
            SyncError::Store(_) | SyncError::Fs(_) | SyncError::Io { .. } => {
                Some(format!("the server's store: {e}"))
            }
            _ => Some(e.to_string()),
        };
        if let Some(mut reason) = reason {
            reason.truncate(reason.floor_char_boundary(REFUSE_REASON_MAX));
            if out.send(&Msg::Refuse { code: 5, reason }).is_ok() {
                out.finish(std::time::Duration::from_secs(2)).await;
            }
        }
    }
    // The writer task holds the stream, and with it the connection: close
    // it, or a peer that stopped reading would keep it.
    conn.close(0u32.into(), b"closed");
    r
}

/// The longest reason sent with a Refuse (its frame's limit is 4 KiB).
const REFUSE_REASON_MAX: usize = 1024;

/// The most blocks a peer may have asked for and not yet been sent: past
/// it the server stops reading that peer until it has sent some (the peer
/// keeps reading meanwhile, so this cannot stall both).
const OWED_MAX: usize = 2 * MAX_WANT;

/// One peer's connection, after its Welcome.
struct Conn<'a> {
    st: &'a Rc<State>,
    volume: &'a str,
    peer: &'a PeerEntry,
    out: &'a Outbox,
    /// The last sequence sent (or known to the peer).
    sent: u64,
    /// Its push, waiting for blocks.
    pending: Option<Pending>,
    /// Blocks it asked for, not yet sent.
    owed: VecDeque<Wanted>,
    /// Its push taken last: sequence, counter, time. Acknowledged once
    /// everything ordered before it has been sent.
    ack: Option<(u64, u64, i64)>,
    /// The snapshot being sent in place of the log cut past `sent`, a
    /// part at a time as the queue has room.
    snapshot: Option<cut::SnapshotOut<'a>>,
}

impl<'a> Conn<'a> {
    async fn run(
        &mut self,
        mut rx: tokio::sync::mpsc::Receiver<Result<Msg, SyncError>>,
        mut heads: watch::Receiver<u64>,
    ) -> Result<(), SyncError> {
        loop {
            let head = *heads.borrow_and_update();
            self.fill(head)?;
            let owes = self.sent < head || self.ack.is_some() || !self.owed.is_empty();
            tokio::select! {
                m = rx.recv(), if self.owed.len() < OWED_MAX => {
                    let m = m.ok_or_else(|| SyncError::Net("reader ended".into()))??;
                    self.on_msg(m)?;
                }
                r = heads.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
                r = self.out.room(), if owes => r?,
            }
        }
    }

    /// Queues what this peer is owed while the outbox has room: the log
    /// in order up to `head` (the snapshot first wherever the log was cut
    /// past what was sent), the ack of its push once everything before
    /// the push is sent, the blocks it asked for.
    fn fill(&mut self, head: u64) -> Result<(), SyncError> {
        while self.out.has_room() {
            if let Some((seq, counter, time)) = self.ack
                && self.sent + 1 >= seq
            {
                // A cut made while this waited may have sent the snapshot
                // past `seq`: never back.
                self.sent = self.sent.max(seq);
                self.out.send(&Msg::Ack { counter, seq, time })?;
                self.ack = None;
                if let Err(e) = cut_if_due(self.st, self.volume, seq) {
                    tracing::warn!(volume = %self.volume, "cutting the log failed: {e}");
                }
                continue;
            }
            if let Some(w) = self.owed.pop_front() {
                self.send_block(w)?;
                continue;
            }
            if let Some(s) = &mut self.snapshot {
                match s.next_part(self.volume)? {
                    Some(part) => self.out.send(&part)?,
                    None => {
                        self.sent = s.cut;
                        self.snapshot = None;
                        self.st.totals.borrow_mut().snapshots_out += 1;
                    }
                }
                continue;
            }
            let upto = self.ack.map_or(head, |(seq, ..)| seq - 1);
            if self.sent >= upto {
                return Ok(());
            }
            let st: &'a State = self.st;
            let out = st.snapshot_out(self.volume)?;
            if self.sent < out.cut {
                self.snapshot = Some(out);
                continue;
            }
            self.sent += 1;
            let cs = self.st.change_set(self.volume, self.sent)?;
            self.out.send(&Msg::Deliver { seq: self.sent, cs })?;
        }
        Ok(())
    }

    /// A block the peer asked for: as a patch against the base it named
    /// when the server has that and the patch is small, whole otherwise.
    fn send_block(&mut self, w: Wanted) -> Result<(), SyncError> {
        let st = self.st;
        let Some(data) = st.block(&w.hash)? else {
            return Err(SyncError::Protocol(format!(
                "a block the server does not have: {}",
                hex(&w.hash)
            )));
        };
        let patch = match w.base {
            Some(b) if b != w.hash => st
                .block(&b)?
                .and_then(|b| crate::sync::patch::diff(&b, &data)),
            _ => None,
        };
        let m = match patch {
            Some(patch) => {
                st.totals.borrow_mut().patches_out += 1;
                Msg::Patch {
                    hash: w.hash,
                    base: w.base.unwrap_or_default(),
                    patch,
                }
            }
            None => Msg::Block { hash: w.hash, data },
        };
        self.out.send(&m)?;
        st.totals.borrow_mut().blocks_out += 1;
        Ok(())
    }

    fn want(&self, hashes: impl IntoIterator<Item = Hash>) -> Result<(), SyncError> {
        let want: Vec<Wanted> = hashes.into_iter().map(Wanted::whole).collect();
        for chunk in want.chunks(MAX_WANT) {
            self.out.send(&Msg::Want {
                wants: chunk.to_vec(),
            })?;
        }
        Ok(())
    }

    fn on_msg(&mut self, m: Msg) -> Result<(), SyncError> {
        let st = self.st;
        match m {
            Msg::Push(cs) => {
                if self.pending.is_some() || self.ack.is_some() {
                    return Err(SyncError::Protocol(
                        "a push before the last one was acknowledged".into(),
                    ));
                }
                let mut missing = HashSet::new();
                for h in hashes_of(&cs) {
                    if !st.has_block(&h)? {
                        missing.insert(h);
                    }
                }
                if !missing.is_empty() {
                    st.room_for_blocks()?;
                }
                self.want(missing.iter().copied())?;
                self.pending = Some(Pending {
                    cs,
                    missing,
                    got: Vec::new(),
                });
            }
            Msg::Block { hash, data } => {
                let Some(p) = self.pending.as_mut().filter(|p| p.missing.contains(&hash)) else {
                    return Err(SyncError::Protocol("a block nobody asked for".into()));
                };
                if *blake3::hash(&data).as_bytes() != hash {
                    return Err(SyncError::Protocol(
                        "a block whose bytes do not match its hash".into(),
                    ));
                }
                p.missing.remove(&hash);
                p.got.push((hash, data));
                st.totals.borrow_mut().blocks_in += 1;
            }
            Msg::Patch { hash, base, patch } => {
                let Some(p) = self.pending.as_mut().filter(|p| p.missing.contains(&hash)) else {
                    return Err(SyncError::Protocol("a block nobody asked for".into()));
                };
                let rebuilt = match st.block(&base)? {
                    Some(b) => crate::sync::patch::apply(&b, &patch, MAX_BLOCK)
                        .map_err(|e| SyncError::Protocol(e.to_string()))?,
                    None => Vec::new(),
                };
                if *blake3::hash(&rebuilt).as_bytes() == hash {
                    p.missing.remove(&hash);
                    p.got.push((hash, rebuilt));
                    let mut t = st.totals.borrow_mut();
                    t.blocks_in += 1;
                    t.patches_in += 1;
                } else {
                    // Not a base this server has (or not the one the peer
                    // thought): the block, whole.
                    tracing::debug!(peer = %self.peer.name, "a patch that does not rebuild its block; asked whole");
                    self.want([hash])?;
                }
            }
            Msg::Want { wants } => self.owed.extend(wants),
            other => {
                return Err(SyncError::Protocol(format!("unexpected {}", other.name())));
            }
        }
        if self.pending.as_ref().is_some_and(|p| p.missing.is_empty())
            && let Some(mut p) = self.pending.take()
        {
            // A block the server had when the push came may have been
            // deleted since, by a cut of the log: asked again.
            let got: HashSet<Hash> = p.got.iter().map(|(h, _)| *h).collect();
            for h in hashes_of(&p.cs) {
                if !got.contains(&h) && !st.has_block(&h)? {
                    p.missing.insert(h);
                }
            }
            if !p.missing.is_empty() {
                self.want(p.missing.iter().copied())?;
                self.pending = Some(p);
                return Ok(());
            }
            // Everything ordered before it first, then its ack, which
            // stands for its delivery (`fill`). The sequence is fixed when
            // it is taken: a push another connection took before it must
            // reach this peer before the ack.
            self.ack = match take_push(st, self.volume, self.peer, p) {
                Err(SyncError::Store(e)) if e.is_no_space() => {
                    let kind = match e {
                        crate::store::StoreError::Quota => Full::Quota,
                        _ => Full::Disk,
                    };
                    st.full
                        .set(Some((st.room(), std::time::Instant::now(), kind)));
                    tracing::warn!("a push not stored: {e}; pushes wait until there is room");
                    return Err(SyncError::Store(e));
                }
                r => r?,
            };
        }
        Ok(())
    }
}

/// Makes a push durable as the volume's next sequence and tells every
/// connection of the volume; `None` for a push at or below the last taken
/// from that peer (a stale one from a dead connection).
fn take_push(
    st: &State,
    volume: &str,
    peer: &PeerEntry,
    p: Pending,
) -> Result<Option<(u64, u64, i64)>, SyncError> {
    let (last, _) = last_taken(st, volume, peer.id)?;
    let mut cs = p.cs;
    if cs.counter <= last {
        tracing::info!(peer = %peer.name, counter = cs.counter, last, "a stale push ignored");
        return Ok(None);
    }
    let heads = st.heads.borrow();
    let Some(tx) = heads.get(volume) else {
        return Err(SyncError::Protocol("no head for the volume".into()));
    };
    let seq = *tx.borrow() + 1;
    cs.origin = peer.id;
    cs.origin_name = peer.name.clone();
    cs.time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut encoded = Vec::new();
    Msg::Push(cs.clone()).encode(&mut encoded)?;
    let mut t = st.store.begin_write()?;
    for (h, data) in &p.got {
        t.put(&block_key(h), data)?;
    }
    t.put(&log_key(volume, seq), &encoded[crate::sync::wire::HEADER..])?;
    let mut taken = cs.counter.to_le_bytes().to_vec();
    taken.extend_from_slice(&seq.to_le_bytes());
    t.put(&counter_key(volume, peer.id), &taken)?;
    t.commit(&format!("{volume} {seq} from {}", peer.name))?;
    tx.send_replace(seq);
    drop(heads);
    st.totals.borrow_mut().pushes += 1;
    st.write_status();
    tracing::debug!(peer = %peer.name, seq, ops = cs.ops.len(), blocks = p.got.len(), "push taken");
    Ok(Some((seq, cs.counter, cs.time)))
}
