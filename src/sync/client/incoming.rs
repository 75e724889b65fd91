//! The receiving side of a session: blocks asked for a window ahead of
//! the change-sets waiting, and the change-sets applied in batches, each
//! worked out on the peer while its trees record (undone if the
//! filesystem refuses it, see `Tree::record`).

use super::*;
use crate::sync::tree::diff;

/// The most operations applied as one version when change-sets queue up.
const BATCH_OPS: usize = 4096;

/// How one try at applying a batch went.
enum Attempt {
    /// Applied (or nothing to write), with this many conflict copies made.
    Done(u64),
    /// These blocks are needed first; nothing changed.
    Need(Vec<Hash>),
    /// Something changed here meanwhile; nothing changed.
    Moved,
}

/// A change-set of the log, waiting to be applied.
pub(super) struct Delivered {
    seq: u64,
    cs: ChangeSet,
    /// Its blocks were asked for (those not here): it is in the window.
    requested: bool,
    /// Blocks it asked for that have not come yet.
    waiting: usize,
}

impl Delivered {
    pub(super) fn new(seq: u64, cs: ChangeSet) -> Delivered {
        Delivered {
            seq,
            cs,
            requested: false,
            waiting: 0,
        }
    }
}

impl Session<'_> {
    /// Applies the change-set at the front of the queue, with those ready
    /// behind it, once its blocks are here; false while it waits for them.
    pub(super) async fn apply_front(
        &mut self,
        send: &mut quinn::SendStream,
    ) -> Result<bool, SyncError> {
        let Some(Event::Deliver(d)) = self.queue.front() else {
            return Ok(false);
        };
        if !d.requested || d.waiting > 0 {
            return Ok(false);
        }
        let seq = d.seq;
        let batch = self.next_batch();
        let need = self.apply(&batch)?;
        if !need.is_empty() {
            // The result needs blocks this peer no longer has (a file
            // deleted here comes back): ask, then again. A block already
            // asked for by a later change-set is now waited for by this one.
            let mut fresh = Vec::new();
            for h in need {
                match self.asked.get_mut(&h) {
                    Some(by) => {
                        let was = std::mem::replace(by, seq);
                        self.waits(was, -1);
                    }
                    None => fresh.push(h),
                }
                self.waits(seq, 1);
            }
            self.ask(send, seq, &fresh).await?;
            return Ok(false);
        }
        self.queue.drain(..batch.len());
        self.read_at = 0;
        // Keep only the blocks still to be used.
        let keep: HashSet<Hash> = self
            .queue
            .iter()
            .filter_map(|ev| match ev {
                Event::Deliver(d) if d.requested => Some(&d.cs),
                _ => None,
            })
            .flat_map(crate::sync::server::hashes_of)
            .collect();
        self.fetched.retain(|h, _| keep.contains(h));
        self.request(send).await?;
        Ok(true)
    }

    /// Sequence `seq` waits for one block more (1) or less (-1).
    pub(super) fn waits(&mut self, seq: u64, by: isize) {
        for ev in &mut self.queue {
            if let Event::Deliver(d) = ev
                && d.seq == seq
            {
                d.waiting = d.waiting.saturating_add_signed(by);
                return;
            }
        }
    }

    /// Asks for the blocks of the change-sets next in the queue that are
    /// not here, as long as fewer than a window's worth (`SyncConf::window`)
    /// are held or on their way (the first change-set waiting is always asked for): the
    /// blocks of a long log stream in as it is applied, and memory holds a
    /// window of them, not all.
    pub(super) async fn request(&mut self, send: &mut quinn::SendStream) -> Result<(), SyncError> {
        let mut first = true;
        let mut asks: Vec<(u64, Vec<Hash>)> = Vec::new();
        let mut asking: HashSet<Hash> = HashSet::new();
        let window = (self.window / self.fs.block_size().max(1)).max(1) as usize;
        let mut held = self.asked.len() + self.fetched.len();
        for ev in &mut self.queue {
            let Event::Deliver(d) = ev else {
                continue;
            };
            if d.requested {
                first = false;
                continue;
            }
            if !first && held >= window {
                break;
            }
            first = false;
            d.requested = true;
            let need: Vec<Hash> = crate::sync::server::hashes_of(&d.cs)
                .into_iter()
                .filter(|h| {
                    !self.view.places.contains_key(h)
                        && !self.fetched.contains_key(h)
                        && !self.asked.contains_key(h)
                        && asking.insert(*h)
                })
                .collect();
            held += need.len();
            d.waiting += need.len();
            asks.push((d.seq, need));
        }
        for (seq, need) in asks {
            self.ask(send, seq, &need).await?;
        }
        Ok(())
    }

    /// Asks the server for these blocks for sequence `seq` (a Want per
    /// 32,768).
    async fn ask(
        &mut self,
        send: &mut quinn::SendStream,
        seq: u64,
        need: &[Hash],
    ) -> Result<(), SyncError> {
        for chunk in need.chunks(MAX_WANT) {
            self.asked.extend(chunk.iter().map(|h| (*h, seq)));
            let want = Msg::Want {
                hashes: chunk.to_vec(),
            };
            send_msg(send, &want, &self.bytes).await?;
        }
        Ok(())
    }

    /// Delivers `batch` to the peer (recording) and writes what that
    /// changed in the local tree into the filesystem, onto commit `version`.
    fn try_apply(
        &mut self,
        batch: &[(u64, ChangeSet)],
        now: i64,
        version: u64,
        cause: &str,
    ) -> Result<Attempt, SyncError> {
        let mut copies = 0u64;
        let mut changed = std::collections::BTreeSet::new();
        for (seq, cs) in batch {
            changed.extend(
                self.peer
                    .on_deliver(*seq, cs, now, &mut || {
                        copies += 1;
                        let r = crate::sync::random32().unwrap_or_default();
                        u128::from_le_bytes(r[..16].try_into().unwrap_or_default())
                    })
                    .map_err(|v| SyncError::Protocol(v.to_string()))?,
            );
        }
        let before = self.peer.local.before(&changed);
        let ops = diff(&before, &self.peer.local, Some(&changed));
        if ops.is_empty() {
            return Ok(Attempt::Done(copies));
        }
        let (fetched, places, fs) = (&self.fetched, &self.view.places, self.fs);
        let change = match to_remote(&ops, version, &mut |h| {
            fetched.get(h).cloned().or_else(|| {
                // A place may be stale (the file changed since): the
                // bytes must still hash to `h`.
                let (fid, idx) = places.get(h)?;
                let b = fs.committed_block(version, *fid, *idx).ok()?;
                (blake3::hash(&b).as_bytes() == h).then_some(b)
            })
        }) {
            Ok(c) => c,
            Err(missing) => return Ok(Attempt::Need(missing.0)),
        };
        Ok(match self.fs.apply_remote(&change, cause)? {
            Applied::Done {
                mut inodes,
                entries,
            } => {
                inodes.extend(entries.iter().map(|(dir, _)| *dir));
                inodes.sort_unstable();
                inodes.dedup();
                self.fs.changed_elsewhere(&inodes, &entries);
                Attempt::Done(copies)
            }
            Applied::Moved => Attempt::Moved,
        })
    }

    /// The change-sets delivered at the front of the queue, in order, up to
    /// [`BATCH_OPS`] operations (at least one): applied as one version.
    /// A peer catching up on a long log pays the fixed costs of an apply
    /// (a commit, the kernel told, a copy of its trees) once per batch
    /// instead of once per change-set.
    fn next_batch(&self) -> Vec<(u64, ChangeSet)> {
        let mut batch = Vec::new();
        let mut ops = 0;
        for ev in &self.queue {
            match ev {
                Event::Deliver(d)
                    if d.requested
                        && d.waiting == 0
                        && (batch.is_empty() || ops + d.cs.ops.len() <= BATCH_OPS) =>
                {
                    ops += d.cs.ops.len();
                    batch.push((d.seq, d.cs.clone()));
                }
                _ => break,
            }
        }
        batch
    }

    /// Applies the change-sets of `batch`, in order, as one version;
    /// returns the blocks it still needs (then nothing changed), or none
    /// once applied.
    fn apply(&mut self, batch: &[(u64, ChangeSet)]) -> Result<Vec<Hash>, SyncError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // The kernel writes back its dirty pages of the files this touches
        // first: changes made here come in as writes, are committed below,
        // and meet the remote change as a conflict instead of overwriting
        // it afterwards (decision 10). The fence catches a page the kernel
        // reads again before the change is in (fs/coherence.rs).
        let mut here = Vec::new();
        for op in batch.iter().flat_map(|(_, cs)| &cs.ops) {
            if let Some(ino) = self.fs.ino_of_file_id(op.fid())? {
                here.push(ino);
            }
        }
        here.sort_unstable();
        here.dedup();
        let (Some((first, first_cs)), Some((last, _))) = (batch.first(), batch.last()) else {
            return Ok(Vec::new());
        };
        let cause = if batch.len() == 1 {
            format!("sync: {} sequence {first}", first_cs.origin_name)
        } else {
            let mut from: Vec<&str> = batch.iter().map(|(_, c)| c.origin_name.as_str()).collect();
            from.sort_unstable();
            from.dedup();
            format!("sync: {} sequences {first}-{last}", from.join(","))
        };
        for _ in 0..50 {
            self.fs.fence(&here);
            self.fs.invalidate(&here, &[]);
            self.fs.commit("sync: before applying")?;
            let version = self.read_local()?;
            // Worked out on the peer itself, recorded: a refusal takes it
            // back (a copy of the trees would cost O(files) every time).
            let saved = self.peer.record();
            match self.try_apply(batch, now, version, &cause) {
                Ok(Attempt::Done(copies)) => {
                    self.peer.keep();
                    self.state_changed()?;
                    self.status.lock().conflicts += copies;
                    tracing::debug!(first, last, "sync applied");
                    return Ok(Vec::new());
                }
                Ok(Attempt::Need(missing)) => {
                    self.peer.undo(saved);
                    return Ok(missing);
                }
                Ok(Attempt::Moved) => self.peer.undo(saved),
                Err(e) => {
                    self.peer.undo(saved);
                    return Err(e);
                }
            }
        }
        Err(SyncError::Net(format!(
            "sequences {first}-{last} could not be applied: the mount kept changing; trying again later"
        )))
    }
}
