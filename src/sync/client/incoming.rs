//! The receiving side of a session: blocks asked for a window ahead of
//! the change-sets waiting, and the change-sets applied in batches, each
//! worked out on the peer while its trees record (undone if the
//! filesystem refuses it, see `Tree::record`).
//!
//! Every step costs what the message carries, not what the queue holds:
//! a peer catching up on a log of a hundred thousand change-sets finds a
//! sequence by binary search (sequences ascend in the queue), starts
//! asking where it stopped, and lets go of a fetched block when the last
//! change-set that uses it is applied.

use super::*;
use crate::fs::Origin;
use crate::sync::tree::{Op, Tree, diff};
use crate::sync::wire::{Msg, Wanted};

/// Each block a change-set names: (file, index, hash).
fn blocks_of(cs: &ChangeSet) -> impl Iterator<Item = (FileId, u64, Hash)> + '_ {
    cs.ops
        .iter()
        .filter_map(|op| match op {
            Op::Node { fid, blocks, .. } => Some((*fid, blocks)),
            _ => None,
        })
        .flat_map(|(fid, blocks)| {
            blocks
                .iter()
                .filter_map(move |(i, h)| h.map(|h| (fid, *i, h)))
        })
}

/// The most operations applied as one version when change-sets queue up.
const BATCH_OPS: usize = 4096;

/// Tries at once before a batch the mount refused waits: the refusal is a
/// race with one write, usually over by the next try.
const TRIES_AT_ONCE: u32 = 3;

/// The longest wait between two tries of a refused batch.
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a change that found the disk full is tried again.
const NO_SPACE_RETRY: Duration = Duration::from_secs(2);

/// How one try at applying a batch went.
enum Attempt {
    /// Applied (or nothing to write), with this many conflict copies made.
    Done(u64),
    /// These blocks are needed first; nothing changed.
    Need(Vec<Hash>),
    /// Something changed here meanwhile; nothing changed.
    Moved,
}

/// How applying a batch went.
enum Outcome {
    Applied,
    /// These blocks are needed first; nothing changed.
    Need(Vec<Hash>),
    /// The mount kept changing the files it touches; try again later.
    Busy,
    /// The store holds the batch up to this sequence: a try that did not
    /// fit was taken by the commit before this one.
    Stored(u64),
}

/// Something from the server that must be handled in log order.
pub(super) enum Event {
    Deliver(Delivered),
    /// An acknowledgement: sequence, counter, time.
    Ack(u64, u64, i64),
}

impl Event {
    fn seq(&self) -> u64 {
        match self {
            Event::Deliver(d) => d.seq,
            Event::Ack(seq, ..) => *seq,
        }
    }
}

/// A change-set to apply, and the snapshot it stands for, if one.
type Batched = (u64, ChangeSet, Option<Arc<Tree>>);

/// A change-set of the log, waiting to be applied.
pub(super) struct Delivered {
    seq: u64,
    cs: ChangeSet,
    /// The volume as of `seq` when the server sent it in place of the log
    /// (`cs` is then what differs from what this peer had when it came).
    snapshot: Option<Arc<Tree>>,
    /// Its blocks were asked for (those not here): it is in the window.
    requested: bool,
    /// Blocks it asked for that have not come yet.
    waiting: usize,
}

/// What a session received and has not applied yet.
pub(super) struct Incoming {
    /// In log order: sequences ascend.
    queue: VecDeque<Event>,
    /// Blocks fetched for change-sets waiting to be applied.
    fetched: HashMap<Hash, Vec<u8>>,
    /// Blocks asked for and not come yet → the sequence that asked.
    asked: HashMap<Hash, u64>,
    /// Blocks asked for against a base → where this peer had that base
    /// (tried when the block index no longer finds the base: its place
    /// may have changed since, and the bytes are checked by their hash).
    asked_at: HashMap<Hash, (FileId, u64)>,
    /// How many change-sets in the window use each block: a fetched block
    /// is let go of when none is left.
    uses: HashMap<Hash, u32>,
    /// The change-sets asked for are the first ones delivered, up to this
    /// sequence (0: none yet)...
    asked_to: u64,
    /// ... and this many of them are still in the queue.
    in_window: usize,
    /// `SyncConf::window`, in blocks.
    window: usize,
    /// A refused batch waits until then; tries so far.
    retry: Option<tokio::time::Instant>,
    /// The last sequence of the batch at the front that did not fit (a
    /// full disk): tried again every [`NO_SPACE_RETRY`].
    pub(super) no_room: Option<u64>,
    tries: u32,
}

impl Incoming {
    pub(super) fn new(window_bytes: u64, block_size: u64) -> Incoming {
        Incoming {
            queue: VecDeque::new(),
            fetched: HashMap::new(),
            asked: HashMap::new(),
            asked_at: HashMap::new(),
            uses: HashMap::new(),
            asked_to: 0,
            in_window: 0,
            window: (window_bytes / block_size.max(1)).max(1) as usize,
            retry: None,
            no_room: None,
            tries: 0,
        }
    }

    pub(super) fn window_blocks(&self) -> usize {
        self.window
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn ack(&mut self, seq: u64, counter: u64, time: i64) {
        self.queue.push_back(Event::Ack(seq, counter, time));
    }

    /// The last sequence queued (0: none): the queue ascends, and an ack
    /// at or below it is one a queued snapshot holds.
    pub(super) fn back_seq(&self) -> u64 {
        self.queue.back().map_or(0, Event::seq)
    }

    /// When a refused batch is to be tried again.
    pub(super) fn retry_at(&self) -> Option<tokio::time::Instant> {
        self.retry
    }

    pub(super) fn retry_now(&mut self) {
        self.retry = None;
    }

    /// A block asked for came; an error if it was not asked for or its
    /// bytes do not match its hash.
    pub(super) fn on_block(&mut self, hash: Hash, data: Vec<u8>) -> Result<(), SyncError> {
        if *blake3::hash(&data).as_bytes() != hash {
            return Err(SyncError::Protocol("a block not matching its hash".into()));
        }
        let Some(by) = self.asked.remove(&hash) else {
            return Err(SyncError::Protocol("a block not asked for".into()));
        };
        self.asked_at.remove(&hash);
        self.waits(by, -1);
        self.fetched.insert(hash, data);
        Ok(())
    }

    /// The queue's event of sequence `seq`.
    fn find(&mut self, seq: u64) -> Option<&mut Event> {
        let i = self.queue.binary_search_by_key(&seq, Event::seq).ok()?;
        self.queue.get_mut(i)
    }

    /// Sequence `seq` waits for one block more (1) or less (-1).
    fn waits(&mut self, seq: u64, by: isize) {
        if let Some(Event::Deliver(d)) = self.find(seq) {
            d.waiting = d.waiting.saturating_add_signed(by);
        }
    }
}

impl Session<'_> {
    /// A change-set of the log came: queued, and its blocks asked for if
    /// the window has room.
    pub(super) fn on_deliver(
        &mut self,
        seq: u64,
        cs: ChangeSet,
        snapshot: Option<Arc<Tree>>,
    ) -> Result<(), SyncError> {
        if self.inc.queue.back().is_some_and(|e| e.seq() >= seq) {
            return Err(SyncError::Protocol(format!(
                "sequence {seq} delivered out of order"
            )));
        }
        self.inc.queue.push_back(Event::Deliver(Delivered {
            seq,
            cs,
            snapshot,
            requested: false,
            waiting: 0,
        }));
        self.request()
    }

    /// Handles, in order, what can be handled now: a change-set once its
    /// blocks are here, an ack.
    pub(super) fn drain(&mut self) -> Result<(), SyncError> {
        while let Some(ev) = self.inc.queue.front() {
            match ev {
                Event::Ack(seq, counter, time) => {
                    let (seq, counter, time) = (*seq, *counter, *time);
                    let pushed = (self.peer.in_flight_push())
                        .filter(|cs| cs.counter == counter)
                        .cloned();
                    // Checked before it is journaled: a wrong ack must not
                    // leave an entry (nor raise the journal's `through`).
                    self.peer
                        .on_ack(seq, counter, time)
                        .map_err(|v| SyncError::Protocol(v.to_string()))?;
                    if let Some((c, version)) = self.whole_at.take() {
                        if c == counter {
                            self.status.lock().queued.through(version);
                        } else {
                            self.whole_at = Some((c, version));
                        }
                    }
                    // Journaled as the sequence it became (`journal.rs`).
                    if let Some(mut cs) = pushed {
                        cs.time = time;
                        // Not synced here: an ack changes nothing in the
                        // store, so only a power cut could lose the entry
                        // (then the log gives the push back as this peer's
                        // own); the next apply's entry syncs it.
                        self.journal
                            .append(seq, &[Msg::Deliver { seq, cs }], false)?;
                    }
                    self.status.lock().pushed = seq;
                    self.state_changed()?;
                    self.acked = true;
                    self.read_at = 0;
                    self.base_snap = self.push_snap.take();
                }
                Event::Deliver(_) => {
                    if !self.apply_front()? {
                        return Ok(());
                    }
                    // What came in may be pushed on.
                    self.push()?;
                    continue;
                }
            }
            self.inc.queue.pop_front();
        }
        if std::mem::take(&mut self.acked) {
            self.push()?;
        }
        Ok(())
    }

    /// Applies the change-set at the front of the queue, with those ready
    /// behind it, once its blocks are here; false while it waits for them
    /// (or for the mount to stop changing the files it touches).
    fn apply_front(&mut self) -> Result<bool, SyncError> {
        let Some(Event::Deliver(d)) = self.inc.queue.front() else {
            return Ok(false);
        };
        if !d.requested || d.waiting > 0 || self.inc.retry.is_some() {
            return Ok(false);
        }
        let seq = d.seq;
        // The store may hold it already: a try that did not fit (a full
        // disk) was taken by a later commit.
        let stored = self.fs.synced_seq();
        if seq <= stored {
            return self.take_stored(stored);
        }
        let batch = self.next_batch(self.inc.no_room.unwrap_or(u64::MAX));
        let outcome = match self.apply(&batch) {
            Err(e) if e.is_no_space() => {
                // The connection stays, and so do the blocks fetched:
                // tried again as it is, not fetched again, until there is
                // room (what comes after it waits behind it).
                if self.inc.tries == 0 {
                    tracing::warn!(seq, "sync: {e}; changes from elsewhere wait for room");
                }
                self.inc.tries = 1;
                self.inc.no_room = batch.last().map(|(s, _, _)| *s);
                self.status.lock().why = format!("connected; changes from elsewhere wait: {e}");
                self.inc.retry = Some(tokio::time::Instant::now() + NO_SPACE_RETRY);
                return Ok(false);
            }
            r => r?,
        };
        match outcome {
            Outcome::Stored(stored) => return self.take_stored(stored),
            Outcome::Applied => {
                if self.inc.tries > 0 {
                    self.status.lock().why = "connected".into();
                }
                self.inc.tries = 0;
                self.inc.no_room = None;
            }
            Outcome::Busy => {
                // A writer here keeps touching these files: wait a little
                // longer each time (the connection stays; blocks keep
                // coming), so that it can finish.
                self.inc.tries += 1;
                let wait = Duration::from_millis(1 << (self.inc.tries - 1).min(10)).min(RETRY_MAX);
                if self.inc.tries == 10 {
                    tracing::warn!(
                        seq,
                        "sync: the files sequence {seq} changes are being written here; \
                         it waits until they are quiet"
                    );
                }
                self.inc.retry = Some(tokio::time::Instant::now() + wait);
                return Ok(false);
            }
            Outcome::Need(need) => {
                // The result needs blocks this peer no longer has (a file
                // deleted here comes back): ask, then again. A block
                // already asked for by a later change-set is now waited
                // for by this one.
                let mut fresh = Vec::new();
                for h in need {
                    match self.inc.asked.get_mut(&h) {
                        Some(by) => {
                            let was = std::mem::replace(by, seq);
                            self.inc.waits(was, -1);
                        }
                        None => fresh.push(h),
                    }
                    self.inc.waits(seq, 1);
                }
                let fresh: Vec<Wanted> = fresh.into_iter().map(Wanted::whole).collect();
                self.ask(seq, &fresh)?;
                return Ok(false);
            }
        }
        self.applied(&batch)?;
        Ok(true)
    }

    /// Takes `batch`, applied, off the front of the queue, with the blocks
    /// only it used, and asks for what comes next.
    fn applied(&mut self, batch: &[Batched]) -> Result<(), SyncError> {
        let inc = &mut self.inc;
        for ev in inc.queue.drain(..batch.len()) {
            if let Event::Deliver(d) = ev {
                // Counted as `request` counted them: each place.
                for (_, _, h) in blocks_of(&d.cs) {
                    if let Some(n) = inc.uses.get_mut(&h) {
                        *n -= 1;
                        if *n == 0 {
                            inc.uses.remove(&h);
                        }
                    }
                }
            }
        }
        inc.in_window -= batch.len();
        // Keep only the blocks a change-set left still uses (those asked
        // for a refused result included none): the window bounds them.
        let uses = &inc.uses;
        inc.fetched.retain(|h, _| uses.contains_key(h));
        self.read_at = 0;
        self.request()
    }

    /// Asks for the blocks of the change-sets next in the queue that are
    /// not here, as long as fewer than a window's worth (`SyncConf::window`)
    /// are held or on their way (the first change-set waiting is always
    /// asked for): the blocks of a long log stream in as it is applied,
    /// and memory holds a window of them, not all.
    fn request(&mut self) -> Result<(), SyncError> {
        if !self.view.ready {
            // The blocks here are named from the local tree: read it now
            // (the first time in a session), not at the first apply.
            self.read_local()?;
        }
        let snap = self.fs.store().latest()?;
        let inc = &mut self.inc;
        let mut asks: Vec<(u64, Vec<Wanted>)> = Vec::new();
        let mut asking: HashSet<Hash> = HashSet::new();
        let mut held = inc.asked.len() + inc.fetched.len();
        let start = inc.queue.partition_point(|e| e.seq() <= inc.asked_to);
        for i in start..inc.queue.len() {
            let Some(Event::Deliver(d)) = inc.queue.get_mut(i) else {
                continue;
            };
            if inc.in_window > 0 && held >= inc.window {
                break;
            }
            d.requested = true;
            inc.asked_to = d.seq;
            inc.in_window += 1;
            let mut need = Vec::new();
            for (fid, idx, h) in blocks_of(&d.cs) {
                *inc.uses.entry(h).or_default() += 1;
                if !inc.fetched.contains_key(&h)
                    && !inc.asked.contains_key(&h)
                    && !asking.contains(&h)
                    && !self.fs.has_block(&snap, &h)?
                {
                    asking.insert(h);
                    // The block this peer has in its place, which the
                    // server may send it as a patch against.
                    let base = match self.peer.local.block(fid, idx) {
                        Some(b) if self.fs.has_block(&snap, &b)? => Some(b),
                        _ => None,
                    };
                    if base.is_some() {
                        inc.asked_at.insert(h, (fid, idx));
                    }
                    need.push(Wanted { hash: h, base });
                }
            }
            held += need.len();
            d.waiting += need.len();
            asks.push((d.seq, need));
        }
        drop(snap);
        for (seq, need) in asks {
            self.ask(seq, &need)?;
        }
        Ok(())
    }

    /// Asks the server for these blocks for sequence `seq` (a Want per
    /// 32,768).
    fn ask(&mut self, seq: u64, need: &[Wanted]) -> Result<(), SyncError> {
        for chunk in need.chunks(MAX_WANT) {
            self.inc.asked.extend(chunk.iter().map(|w| (w.hash, seq)));
            let want = Msg::Want {
                wants: chunk.to_vec(),
            };
            self.send(&want)?;
        }
        Ok(())
    }

    /// A block asked for came as a patch: rebuilt on the block this peer
    /// has in its place, or asked for again whole if that cannot be done
    /// (the base changed here since it was named).
    pub(super) fn on_patch(
        &mut self,
        hash: Hash,
        base: Hash,
        patch: crate::sync::patch::Patch,
    ) -> Result<(), SyncError> {
        let Some(&by) = self.inc.asked.get(&hash) else {
            return Err(SyncError::Protocol("a block not asked for".into()));
        };
        // Where the base may be: fetched, where the block index finds it,
        // the place it stood when asked for (checked by its hash).
        let snap = self.fs.store().latest()?;
        let old = match self.inc.fetched.get(&base) {
            Some(b) => Some(b.clone()),
            None => match self.fs.block_by_hash(&snap, &base)? {
                Some(b) => Some(b),
                None => self.inc.asked_at.get(&hash).and_then(|&(fid, idx)| {
                    self.fs.file_block_if(&snap, fid, idx, &base).ok().flatten()
                }),
            },
        };
        drop(snap);
        let rebuilt = old.and_then(|old| {
            crate::sync::patch::apply(&old, &patch, crate::sync::wire::MAX_BLOCK).ok()
        });
        match rebuilt {
            Some(data) if *blake3::hash(&data).as_bytes() == hash => self.inc.on_block(hash, data),
            _ => {
                tracing::debug!("sync: a patch this peer cannot rebuild; asked whole");
                self.inc.asked.remove(&hash);
                self.inc.asked_at.remove(&hash);
                self.ask(by, &[Wanted::whole(hash)])
            }
        }
    }

    /// Delivers `batch` to the peer (recording) and writes what that
    /// changed in the local tree into the filesystem, onto commit `version`.
    fn try_apply(
        &mut self,
        batch: &[Batched],
        now: i64,
        version: u64,
        cause: &str,
        origin: Origin,
    ) -> Result<Attempt, SyncError> {
        let mut copies = 0u64;
        let mut changed = std::collections::BTreeSet::new();
        for (seq, cs, snapshot) in batch {
            let mut new_fid = || {
                copies += 1;
                let r = crate::sync::random32().unwrap_or_default();
                u128::from_le_bytes(r[..16].try_into().unwrap_or_default())
            };
            let got = match snapshot {
                Some(tree) => self.peer.on_snapshot(*seq, tree, now, &mut new_fid),
                None => self.peer.on_deliver(*seq, cs, now, &mut new_fid),
            };
            changed.extend(got.map_err(|v| SyncError::Protocol(v.to_string()))?);
        }
        let before = self.peer.local.before(&changed);
        let ops = diff(&before, &self.peer.local, Some(&changed));
        if ops.is_empty() {
            // Nothing to write here; what this mount commits next still
            // builds on it.
            self.fs.synced_through(origin.seq);
            return Ok(Attempt::Done(copies));
        }
        let snap = self.fs.store().snapshot(version)?;
        let (fetched, fs) = (&self.inc.fetched, self.fs);
        let change = match to_remote(&ops, version, &mut |h| {
            fetched
                .get(h)
                .cloned()
                .or_else(|| fs.block_by_hash(&snap, h).ok().flatten())
        }) {
            Ok(c) => c,
            Err(missing) => return Ok(Attempt::Need(missing.0)),
        };
        // Worked out from the trees: not if a read of them failed.
        self.trees.check()?;
        Ok(match self.fs.apply_remote(&change, cause, origin)? {
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
    /// A snapshot is a batch of its own.
    /// The change-sets at the front of the queue that are ready, up to
    /// sequence `through` (a batch that did not fit is tried again as it
    /// was).
    fn next_batch(&self, through: u64) -> Vec<Batched> {
        let mut batch = Vec::new();
        let mut ops = 0;
        for ev in &self.inc.queue {
            if ev.seq() > through {
                break;
            }
            match ev {
                Event::Deliver(d) if d.snapshot.is_some() => {
                    if batch.is_empty() && d.requested && d.waiting == 0 {
                        batch.push((d.seq, d.cs.clone(), d.snapshot.clone()));
                    }
                    break;
                }
                Event::Deliver(d)
                    if d.requested
                        && d.waiting == 0
                        && (batch.is_empty() || ops + d.cs.ops.len() <= BATCH_OPS) =>
                {
                    ops += d.cs.ops.len();
                    batch.push((d.seq, d.cs.clone(), None));
                }
                _ => break,
            }
        }
        batch
    }

    /// The change-sets at the front up to `stored`, which the store holds:
    /// their try did not fit (a full disk), and a later commit took what
    /// it had written (`Fs::apply_remote` puts it back, recorded as from
    /// elsewhere). The synced tree takes them as a journal replay does,
    /// and the local tree is read again whole, so that what was changed
    /// here meanwhile (a file edited or deleted while the change showed
    /// uncommitted) is this peer's own change, pushed as such.
    fn take_stored(&mut self, stored: u64) -> Result<bool, SyncError> {
        let batch = self.next_batch(stored);
        for (seq, cs, snapshot) in &batch {
            match snapshot {
                Some(tree) => self.peer.replay_snapshot(*seq, Tree::clone(tree)),
                None => {
                    (self.peer.replay(*seq, cs)).map_err(|v| SyncError::Protocol(v.to_string()))?
                }
            }
        }
        self.view.ready = false;
        self.read_local()?;
        self.state_changed()?;
        tracing::info!(
            last = batch.last().map_or(0, |b| b.0),
            "sync: a change that waited for room is in"
        );
        let inc = &mut self.inc;
        if inc.tries > 0 {
            self.status.lock().why = "connected".into();
        }
        (inc.tries, inc.no_room, inc.retry) = (0, None, None);
        self.applied(&batch)?;
        Ok(true)
    }

    /// Applies the change-sets of `batch`, in order, as one version.
    fn apply(&mut self, batch: &[Batched]) -> Result<Outcome, SyncError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // The kernel writes back its dirty pages of the files this touches
        // first: changes made here come in as writes, are committed below,
        // and meet the remote change as a conflict instead of overwriting
        // it afterwards (decision 10). The fence catches a page the kernel
        // reads again before the change is in (fs/coherence.rs).
        let mut here = Vec::new();
        for op in batch.iter().flat_map(|(_, cs, _)| &cs.ops) {
            if let Some(ino) = self.fs.ino_of_file_id(op.fid())? {
                here.push(ino);
            }
        }
        here.sort_unstable();
        here.dedup();
        let (Some((first, first_cs, _)), Some((last, _, _))) = (batch.first(), batch.last()) else {
            return Ok(Outcome::Applied);
        };
        let cause = if batch.len() == 1 {
            format!("sync: {} sequence {first}", first_cs.origin_name)
        } else {
            let mut from: Vec<&str> = batch
                .iter()
                .map(|(_, c, _)| c.origin_name.as_str())
                .collect();
            from.sort_unstable();
            from.dedup();
            format!("sync: {} sequences {first}-{last}", from.join(","))
        };
        // The version records its origin: the one peer its change-sets
        // came from, or several (a snapshot is the work of several).
        let mut peers = batch.iter().map(|(_, c, snap)| match snap {
            Some(_) => Origin::SEVERAL,
            None => c.origin,
        });
        let first_peer = peers.next().unwrap_or(Origin::SEVERAL);
        let origin = Origin {
            peer: if peers.all(|p| p == first_peer) {
                first_peer
            } else {
                Origin::SEVERAL
            },
            seq: *last,
        };
        // Durable before the commit that applies it (`journal.rs`).
        let mut entries = Vec::new();
        for (seq, cs, snapshot) in batch {
            match snapshot {
                Some(tree) => entries.extend(crate::sync::snapshot::parts(
                    tree,
                    *seq,
                    crate::sync::snapshot::PART_BLOCKS,
                )),
                None => entries.push(Msg::Deliver {
                    seq: *seq,
                    cs: cs.clone(),
                }),
            }
        }
        self.journal.append(*last, &entries, true)?;
        for _ in 0..TRIES_AT_ONCE {
            self.fs.fence(&here);
            self.fs.invalidate(&here, &[]);
            self.fs.commit("sync: before applying")?;
            let stored = self.fs.synced_seq();
            if stored >= *first {
                return Ok(Outcome::Stored(stored));
            }
            let version = self.read_local()?;
            // Worked out on the peer itself, recorded: a refusal takes it
            // back (a copy of the trees would cost O(files) every time).
            let saved = self.peer.record();
            match self.try_apply(batch, now, version, &cause, origin) {
                Ok(Attempt::Done(copies)) => {
                    self.peer.keep();
                    self.state_changed()?;
                    if copies > 0 {
                        // A copy of this peer's own holds what a push in
                        // flight carried: not all of it reaches the server.
                        self.whole_at = None;
                    }
                    self.status.lock().conflicts += copies;
                    tracing::debug!(first, last, "sync applied");
                    return Ok(Outcome::Applied);
                }
                Ok(Attempt::Need(missing)) => {
                    self.peer.undo(saved);
                    return Ok(Outcome::Need(missing));
                }
                Ok(Attempt::Moved) => self.peer.undo(saved),
                Err(e) => {
                    self.peer.undo(saved);
                    return Err(e);
                }
            }
        }
        Ok(Outcome::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(seq: u64) -> Event {
        Event::Deliver(Delivered {
            seq,
            cs: ChangeSet {
                origin: 1,
                origin_name: "a".into(),
                counter: seq,
                base: 0,
                time: 0,
                ops: Vec::new(),
            },
            snapshot: None,
            requested: true,
            waiting: 0,
        })
    }

    fn waiting(inc: &Incoming, seq: u64) -> Option<usize> {
        inc.queue.iter().find_map(|e| match e {
            Event::Deliver(d) if d.seq == seq => Some(d.waiting),
            _ => None,
        })
    }

    #[test]
    fn a_block_counts_down_the_change_set_that_asked_for_it_among_acks() {
        let mut inc = Incoming::new(1 << 20, 1 << 16);
        inc.queue.push_back(delivered(3));
        inc.ack(4, 1, 0);
        inc.queue.push_back(delivered(5));
        inc.queue.push_back(delivered(9));
        let data = vec![7u8; 100];
        let h = *blake3::hash(&data).as_bytes();
        inc.asked.insert(h, 5);
        inc.waits(5, 1);
        inc.waits(4, 1); // an ack waits for nothing
        inc.waits(6, 1); // not in the queue
        assert_eq!(waiting(&inc, 5), Some(1));
        inc.on_block(h, data.clone()).unwrap();
        assert_eq!(waiting(&inc, 5), Some(0));
        assert!(inc.fetched.contains_key(&h));
        // Not asked for (any more), or not its hash: refused.
        assert!(inc.on_block(h, data).is_err());
        inc.asked.insert(h, 9);
        assert!(inc.on_block(h, vec![1u8; 100]).is_err());
    }
}
