//! Cutting a volume's log (see "Cutting the log" in `server.rs`): the
//! snapshot's keys, reading it, and the cut itself.

use std::collections::HashSet;

use super::{Hash, Msg, State, SyncError, hashes_of};

pub(super) fn cut_key(volume: &str) -> Vec<u8> {
    let mut k = vec![b'K'];
    k.extend_from_slice(volume.as_bytes());
    k
}

pub(super) fn snapshot_key(volume: &str, part: u32) -> Vec<u8> {
    let mut k = vec![b'S'];
    k.extend_from_slice(volume.as_bytes());
    k.push(0);
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// The volume a key of the form `X volume 0x00 ...` is about.
fn volume_of(key: &[u8]) -> Option<&[u8]> {
    let rest = key.get(1..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

impl State {
    /// The cut of `volume`: its log starts after it.
    pub(super) fn cut(&self, volume: &str) -> Result<u64, SyncError> {
        Ok(self
            .store
            .latest()?
            .get(&cut_key(volume))?
            .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map_or(0, u64::from_le_bytes))
    }

    /// `volume`'s snapshot, to send a part at a time: read from the
    /// version of the store that is the newest now, held open until the
    /// last part is out (a cut meanwhile writes a new snapshot beside it).
    pub(super) fn snapshot_out(&self, volume: &str) -> Result<SnapshotOut<'_>, SyncError> {
        let view = self.store.latest()?;
        let cut = (view.get(&cut_key(volume))?)
            .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map_or(0, u64::from_le_bytes);
        Ok(SnapshotOut { view, cut, next: 0 })
    }

    /// The parts of `volume`'s snapshot, in order.
    pub(super) fn snapshot_parts(&self, volume: &str) -> Result<Vec<Msg>, SyncError> {
        let snap = self.store.latest()?;
        let (from, to) = (snapshot_key(volume, 0), snapshot_key(volume, u32::MAX));
        let mut out = Vec::new();
        for item in snap.range(&from[..]..=&to[..])? {
            let (_, v) = item?;
            out.push(Msg::decode(10, v.value)?);
        }
        Ok(out)
    }
}

/// A snapshot on its way to a peer (see [`State::snapshot_out`]).
pub(super) struct SnapshotOut<'a> {
    view: crate::store::Snapshot<'a>,
    /// The sequence it stands for.
    pub(super) cut: u64,
    next: u32,
}

impl SnapshotOut<'_> {
    /// Its next part, or `None` once every part is out.
    pub(super) fn next_part(&mut self, volume: &str) -> Result<Option<Msg>, SyncError> {
        let Some(v) = self.view.get(&snapshot_key(volume, self.next))? else {
            return Ok(None);
        };
        let m = Msg::decode(10, v)?;
        self.next = self
            .next
            .checked_add(1)
            .ok_or_else(|| SyncError::Protocol("a snapshot of 2^32 parts".into()))?;
        Ok(Some(m))
    }
}

/// Cuts `volume`'s log if it holds twice what it keeps (see "Cutting the
/// log"); `head` is its last sequence.
pub(super) fn cut_if_due(st: &State, volume: &str, head: u64) -> Result<(), SyncError> {
    if st.keep_log == 0 {
        return Ok(());
    }
    let cut = st.cut(volume)?;
    if head.saturating_sub(cut) < 2 * st.keep_log {
        return Ok(());
    }
    cut_log(st, volume, head - st.keep_log)
}

/// Folds `volume`'s log up to `upto` into its snapshot, drops it, and
/// deletes the blocks nothing names any more. One store commit.
fn cut_log(st: &State, volume: &str, upto: u64) -> Result<(), SyncError> {
    let cut = st.cut(volume)?;
    if upto <= cut {
        return Ok(());
    }
    let mut tree = if cut == 0 {
        crate::sync::tree::Tree::default()
    } else {
        let mut a = crate::sync::snapshot::Assembler::default();
        let mut got = None;
        for part in st.snapshot_parts(volume)? {
            if let Msg::Snapshot {
                seq,
                last,
                cs,
                stamps,
            } = part
            {
                got = a
                    .add(seq, last, &cs, &stamps)
                    .map_err(SyncError::Protocol)?;
            }
        }
        got.map(|(_, t)| t)
            .ok_or_else(|| SyncError::Protocol(format!("the snapshot of {volume} is incomplete")))?
    };
    for seq in cut + 1..=upto {
        crate::sync::apply::apply(&mut tree, seq, &st.change_set(volume, seq)?);
    }
    // Every peer behind the cut will be given this tree: one that is not
    // a tree would keep them all reconnecting.
    crate::sync::snapshot::check(&tree)
        .map_err(|e| SyncError::Protocol(format!("the log of {volume} folds to no tree: {e}")))?;
    let parts = crate::sync::snapshot::parts(&tree, upto, crate::sync::snapshot::PART_BLOCKS);
    // Blocks are shared by hash across volumes: what stays named is every
    // volume's snapshot and log, and for one cut more what this cut drops
    // (the old snapshot and the log it folds): a peer still fetching the
    // blocks of change-sets this cut folds away, or of the snapshot it
    // replaces, gets them until the next cut instead of being refused.
    let mut named: HashSet<Hash> = tree
        .nodes
        .values()
        .flat_map(|n| n.blocks.values().copied().collect::<Vec<_>>())
        .collect();
    let snap = st.store.latest()?;
    let (mut old_log, mut old_parts, mut dead) = (Vec::new(), Vec::new(), Vec::new());
    for item in snap.range(&b"L"[..]..&b"M"[..])? {
        let (k, v) = item?;
        let seq = k
            .get(k.len().saturating_sub(8)..)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        if volume_of(k) == Some(volume.as_bytes()) && seq <= upto {
            old_log.push(k.to_vec());
        }
        if let Msg::Push(cs) = Msg::decode(4, v.value)? {
            named.extend(hashes_of(&cs));
        }
    }
    for item in snap.range(&b"S"[..]..&b"T"[..])? {
        let (k, v) = item?;
        if volume_of(k) == Some(volume.as_bytes()) {
            old_parts.push(k.to_vec());
        }
        if let Msg::Snapshot { cs, .. } = Msg::decode(10, v.value)? {
            named.extend(hashes_of(&cs));
        }
    }
    for item in snap.range(&b"H"[..]..&b"I"[..])? {
        let (k, _) = item?;
        let h: Option<Hash> = k.get(1..).and_then(|b| b.try_into().ok());
        if h.is_some_and(|h| !named.contains(&h)) {
            dead.push(k.to_vec());
        }
    }
    drop(snap);
    let mut t = st.store.begin_write()?;
    for k in old_log.iter().chain(&old_parts).chain(&dead) {
        t.delete(k)?;
    }
    for (i, part) in parts.iter().enumerate() {
        let mut frame = Vec::new();
        part.encode(&mut frame)?;
        t.put(
            &snapshot_key(volume, i as u32),
            &frame[crate::sync::wire::HEADER..],
        )?;
    }
    t.put(&cut_key(volume), &upto.to_le_bytes())?;
    t.commit(&format!("{volume}: log cut at {upto}"))?;
    let mut totals = st.totals.borrow_mut();
    totals.cuts += 1;
    totals.blocks_deleted += dead.len() as u64;
    tracing::info!(
        volume,
        cut = upto,
        change_sets = old_log.len(),
        parts = parts.len(),
        blocks_deleted = dead.len(),
        "log cut"
    );
    Ok(())
}
