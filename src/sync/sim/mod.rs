//! The deterministic simulation of sync: a relay and three peers in one
//! process, a simulated network and clock, and random histories: local
//! changes on every peer at once, connections cut at any point, pushes
//! that arrive late from a dead connection (after newer ones) or twice,
//! peers and the server crashing (each keeps only what it made durable),
//! and the server cutting its log (a peer behind the cut gets the volume
//! as of the cut, stamps and all, in place of the change-sets before it).
//! After every history the network heals, and the checks are:
//!
//! - every peer's tree is the server's, and nothing is left to push;
//! - nothing anyone wrote is lost: every block written (each carries a
//!   token of its own) is in the final tree, unless the peer that wrote
//!   over it or deleted it had it in front of it;
//! - every tree stays well formed at every step (each name in a directory
//!   that exists, directories with one name and under the root).
//!
//! `ZIPPYFS_SIM_SEEDS=N` runs N histories (default 50,000), and the seeds
//! that once failed; the same histories run again with each peer's trees
//! in a tree store that spills and folds between steps;
//! `ZIPPYFS_SIM_SEED=S` replays one, printing its steps. A failure names
//! its seed. This file is the simulation; `tests.rs` runs the histories,
//! `changes.rs` makes the local changes.

use std::collections::{BTreeSet, VecDeque};

use super::apply::apply;
use super::peer::{Peer, Relay};
use super::tree::{ChangeSet, FileId, Hash, Key, Meta, Node, ROOT_ID, Stamp, Tree, diff};
use crate::fs::{Kind, Time};

mod changes;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.below(from.len())].clone())
    }
}

enum Up {
    Hello(u64),
    Push(ChangeSet),
}

enum Down {
    Deliver(u64, ChangeSet),
    /// The volume at a sequence, in place of the log the server cut.
    Snapshot(u64, Tree),
    Ack(u64, u64, i64),
    /// The last push taken from the peer (counter, sequence), and the
    /// head: first on every connection.
    Welcome(u64, u64, u64),
}

struct Conn {
    peer: usize,
    open: bool,
    /// The server has had this connection's Hello.
    joined: bool,
    up: VecDeque<Up>,
    down: VecDeque<Down>,
}

struct SimPeer {
    peer: Peer,
    conn: Option<usize>,
    fids: u64,
    /// The head its connection's Welcome named (none yet: `u64::MAX`).
    welcome_head: u64,
}

struct Sim {
    rng: Rng,
    time: i64,
    relay: Relay,
    server_tree: Tree,
    peers: Vec<SimPeer>,
    conns: Vec<Conn>,
    /// Pushes of dead connections the server may still take.
    late: Vec<(usize, ChangeSet)>,
    written: BTreeSet<u64>,
    superseded: BTreeSet<u64>,
    tokens: u64,
    stats: Stats,
    trace: Option<Vec<String>>,
}

/// What the histories exercised, so that a run that stopped exercising
/// conflicts or late pushes fails instead of passing vacuously.
#[derive(Default, Debug)]
struct Stats {
    ordered: u64,
    skipped_ops: u64,
    conflict_copies: u64,
    ignored_pushes: u64,
    late_taken: u64,
    snapshots: u64,
    /// Conflict copies made while taking a snapshot.
    snapshot_copies: u64,
    /// Snapshots sent in place of a log a connection had still to send.
    snapshots_in_place: u64,
    /// Acks that came after a snapshot holding their push.
    acks_within_snapshots: u64,
    /// Pushes a Welcome said were taken though their ack was lost.
    lost_acks: u64,
}

const NAMES: [&str; 5] = ["a", "b", "c.txt", "d", "e.log"];

fn token_hash(t: u64) -> Hash {
    let mut h = [0xab; 32];
    h[..8].copy_from_slice(&t.to_le_bytes());
    h
}

fn token_of(h: &Hash) -> u64 {
    u64::from_le_bytes(h[..8].try_into().unwrap_or_default())
}

impl Sim {
    fn new(seed: u64, replay: bool) -> Sim {
        let peers = (0..3)
            .map(|i| SimPeer {
                peer: Peer::new(i as u32 + 1, &format!("p{}", i + 1), Tree::default()),
                conn: None,
                fids: 0,
                welcome_head: u64::MAX,
            })
            .collect();
        Sim {
            rng: Rng(seed),
            time: 1_796_385_781,
            relay: Relay::default(),
            server_tree: Tree::default(),
            peers,
            conns: Vec::new(),
            late: Vec::new(),
            written: BTreeSet::new(),
            superseded: BTreeSet::new(),
            tokens: 0,
            stats: Stats::default(),
            trace: replay.then(Vec::new),
        }
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let line = what();
            eprintln!("{line}");
            t.push(line);
        }
    }

    fn connect(&mut self, p: usize) {
        if self.peers[p].conn.is_some() {
            return;
        }
        self.conns.push(Conn {
            peer: p,
            open: true,
            joined: false,
            up: VecDeque::from([Up::Hello(self.peers[p].peer.applied)]),
            down: VecDeque::new(),
        });
        self.peers[p].conn = Some(self.conns.len() - 1);
        self.peers[p].welcome_head = u64::MAX;
        self.log(|| format!("p{} connects", p + 1));
    }

    fn cut(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if !conn.open {
            return;
        }
        conn.open = false;
        conn.down.clear();
        let p = conn.peer;
        for m in std::mem::take(&mut conn.up) {
            if let Up::Push(cs) = m
                && self.rng.below(2) == 0
            {
                self.late.push((p, cs));
            }
        }
        self.peers[p].conn = None;
        self.peers[p].peer.disconnected();
        self.log(|| format!("connection of p{} cut", p + 1));
    }

    fn push(&mut self, p: usize) {
        let Some(c) = self.peers[p].conn else {
            return;
        };
        // As the client: nothing goes before the log up to the head the
        // Welcome named is applied.
        let sp = &self.peers[p];
        if sp.peer.applied < sp.welcome_head {
            return;
        }
        // Now and then small push limits, so that changes go in parts.
        let cs = if self.rng.below(4) == 0 {
            let (ops, blocks) = (1 + self.rng.below(3), 1 + self.rng.below(3));
            self.peers[p].peer.push_at_most(ops, blocks)
        } else {
            self.peers[p].peer.push()
        };
        if let Some(cs) = cs {
            self.log(|| format!("p{} pushes #{} on base {}", p + 1, cs.counter, cs.base));
            // Now and then the same push twice: the server takes it once.
            if self.rng.below(20) == 0 {
                self.conns[c].up.push_back(Up::Push(cs.clone()));
            }
            self.conns[c].up.push_back(Up::Push(cs));
        }
    }

    /// The server takes a push from peer `p`, on connection `from` if it is alive.
    fn take(&mut self, p: usize, cs: ChangeSet, from: Option<usize>) {
        let id = self.peers[p].peer.id;
        let name = self.peers[p].peer.name.clone();
        let counter = cs.counter;
        let Some(seq) = self.relay.take(id, &name, cs, self.time) else {
            self.log(|| format!("server ignores p{} push #{counter}", p + 1));
            self.stats.ignored_pushes += 1;
            return;
        };
        let Some(cs) = self.relay.log.last().cloned() else {
            return;
        };
        let out = apply(&mut self.server_tree, seq, &cs);
        self.stats.ordered += 1;
        self.stats.skipped_ops += out.skipped.len() as u64;
        if from.is_none() {
            self.stats.late_taken += 1;
        }
        self.log(|| format!("server orders p{} push #{counter} as {seq}", p + 1));
        for (i, conn) in self.conns.iter_mut().enumerate() {
            if !conn.open || !conn.joined {
                continue;
            }
            if Some(i) == from {
                conn.down.push_back(Down::Ack(seq, counter, cs.time));
            } else {
                conn.down.push_back(Down::Deliver(seq, cs.clone()));
            }
        }
    }

    fn server_step(&mut self, c: usize) {
        let Some(m) = self.conns[c].up.pop_front() else {
            return;
        };
        let p = self.conns[c].peer;
        match m {
            Up::Hello(applied) => {
                let id = self.peers[p].peer.id;
                let (counter, seq) = self.relay.last_taken.get(&id).copied().unwrap_or_default();
                let head = self.relay.head();
                self.conns[c]
                    .down
                    .push_back(Down::Welcome(counter, seq, head));
                if self.relay.needs_snapshot(applied) {
                    let snap = Down::Snapshot(self.relay.cut, self.relay.snapshot.clone());
                    self.conns[c].down.push_back(snap);
                    self.stats.snapshots += 1;
                }
                let back: Vec<Down> = self
                    .relay
                    .since(applied)
                    .map(|(s, cs)| Down::Deliver(s, cs.clone()))
                    .collect();
                self.conns[c].down.extend(back);
                self.conns[c].joined = true;
            }
            Up::Push(cs) => self.take(p, cs, Some(c)),
        }
    }

    fn peer_step(&mut self, c: usize) -> Result<(), String> {
        let Some(m) = self.conns[c].down.pop_front() else {
            return Ok(());
        };
        let p = self.conns[c].peer;
        let now = self.time;
        let sp = &mut self.peers[p];
        let mut fids = sp.fids;
        let first = fids;
        let pid = sp.peer.id;
        // Half the deliveries are recorded first (as the client does), and
        // of those half are undone and done again: the undo must give back
        // the peer exactly, and the recorded state before must diff as a
        // copy would.
        let recorded = self.rng.below(2) == 0;
        let undone = self.rng.below(2) == 0;
        let sp = &mut self.peers[p];
        // A delivery or a snapshot, given to the peer.
        let take = |peer: &mut Peer, f: &mut dyn FnMut() -> FileId| match &m {
            Down::Deliver(seq, cs) => peer.on_deliver(*seq, cs, now, f),
            Down::Snapshot(seq, tree) => peer.on_snapshot(*seq, tree, now, f),
            Down::Ack(..) | Down::Welcome(..) => Ok(BTreeSet::new()),
        };
        let r = match &m {
            Down::Deliver(..) | Down::Snapshot(..) if recorded => {
                let copy = sp.peer.clone();
                let saved = sp.peer.record();
                let mut scratch = fids;
                let got = take(&mut sp.peer, &mut || {
                    scratch += 1;
                    ((pid as u128) << 64) | (1 << 63) | scratch as u128
                });
                if let Ok(changed) = &got {
                    let by_copy = diff(&copy.local, &sp.peer.local, Some(changed));
                    let by_record = diff(
                        &sp.peer.local.before(changed),
                        &sp.peer.local,
                        Some(changed),
                    );
                    if by_copy != by_record {
                        return Err(format!(
                            "p{}: the recorded diff differs from the copy's",
                            p + 1
                        ));
                    }
                }
                if undone || got.is_err() {
                    sp.peer.undo(saved);
                    let same = sp.peer.synced == copy.synced
                        && sp.peer.local == copy.local
                        && sp.peer.applied == copy.applied
                        && sp.peer.counter == copy.counter;
                    if !same {
                        return Err(format!("p{}: undo did not give the peer back", p + 1));
                    }
                    take(&mut sp.peer, &mut || {
                        fids += 1;
                        ((pid as u128) << 64) | (1 << 63) | fids as u128
                    })
                    .map(|_| ())
                } else {
                    sp.peer.keep();
                    fids = scratch;
                    got.map(|_| ())
                }
            }
            Down::Deliver(..) | Down::Snapshot(..) => take(&mut sp.peer, &mut || {
                fids += 1;
                ((pid as u128) << 64) | (1 << 63) | fids as u128
            })
            .map(|_| ()),
            // As the client: an ack at or below what is applied came after
            // a snapshot that holds its push.
            Down::Ack(seq, counter, _) if *seq <= sp.peer.applied => {
                self.stats.acks_within_snapshots += 1;
                sp.peer.on_ack_within_snapshot(*counter, *seq)
            }
            Down::Ack(seq, counter, time) => sp.peer.on_ack(*seq, *counter, *time),
            Down::Welcome(counter, seq, head) => {
                sp.peer.on_welcome(*counter, *seq);
                sp.welcome_head = *head;
                self.stats.lost_acks += u64::from(sp.peer.taken_push().is_some());
                Ok(())
            }
        };
        sp.fids = fids;
        self.stats.conflict_copies += fids - first;
        if let Down::Snapshot(..) = m {
            self.stats.snapshot_copies += fids - first;
        }
        r.map_err(|v| format!("p{}: {v}", p + 1))?;
        match &m {
            Down::Deliver(seq, cs) => {
                self.log(|| format!("p{} applies {seq} from p{}", p + 1, cs.origin))
            }
            Down::Snapshot(seq, _) => {
                self.log(|| format!("p{} takes the snapshot at {seq}", p + 1))
            }
            Down::Ack(seq, counter, _) => {
                self.log(|| format!("p{} has its push #{counter} acked as {seq}", p + 1))
            }
            Down::Welcome(counter, seq, head) => self.log(|| {
                format!(
                    "p{} welcomed at head {head}; its push #{counter} was taken as {seq}",
                    p + 1
                )
            }),
        }
        let local = &self.peers[p].peer.local;
        if local.nodes.len() > 10_000 {
            return Err(format!(
                "p{}'s tree grew to {} files",
                p + 1,
                local.nodes.len()
            ));
        }
        check_tree(local).map_err(|e| format!("p{} local: {e}", p + 1))
    }

    fn step(&mut self) -> Result<(), String> {
        self.time += self.rng.below(3) as i64;
        let roll = self.rng.below(100);
        let p = self.rng.below(self.peers.len());
        match roll {
            0..30 => self.local_change(p),
            30..52 => {
                let ready: Vec<usize> = (0..self.conns.len())
                    .filter(|&c| self.conns[c].open && !self.conns[c].up.is_empty())
                    .collect();
                if let Some(c) = self.rng.pick(&ready) {
                    self.server_step(c);
                }
            }
            52..74 => {
                let ready: Vec<usize> = (0..self.conns.len())
                    .filter(|&c| self.conns[c].open && !self.conns[c].down.is_empty())
                    .collect();
                if let Some(c) = self.rng.pick(&ready) {
                    self.peer_step(c)?;
                }
            }
            74..88 => self.push(p),
            88..90 => {
                if let Some(c) = self.peers[p].conn {
                    self.cut(c);
                }
            }
            90..91 => {
                // A peer crashes: its connection goes, its durable state stays.
                if let Some(c) = self.peers[p].conn {
                    self.cut(c);
                }
                self.log(|| format!("p{} crashes", p + 1));
            }
            91..92 => {
                // The server crashes: every connection goes; what it took is durable.
                for c in 0..self.conns.len() {
                    self.cut(c);
                }
                self.late.clear();
                self.log(|| "server crashes".into());
            }
            92..96 => self.connect(p),
            96..98 => {
                // The server cuts its log somewhere up to its head.
                let (cut, head) = (self.relay.cut, self.relay.head());
                let upto = cut + self.rng.below((head - cut) as usize + 1) as u64;
                self.relay.compact(upto);
                self.log(|| format!("server cuts its log at {upto}"));
                self.snapshot_in_place(upto);
            }
            _ => {
                if !self.late.is_empty() {
                    let at = self.rng.below(self.late.len());
                    let (lp, cs) = self.late.remove(at);
                    self.log(|| format!("a late push #{} of p{} arrives", cs.counter, lp + 1));
                    self.take(lp, cs, None);
                }
            }
        }
        Ok(())
    }

    /// The log up to `upto` is cut while connections still have some of
    /// it to send: each gets the snapshot in its place (as the server
    /// does), and an ack of a push at or below the cut waiting behind
    /// that log arrives after the snapshot that holds it
    /// (`Peer::on_ack_within_snapshot`).
    fn snapshot_in_place(&mut self, upto: u64) {
        for c in 0..self.conns.len() {
            let conn = &mut self.conns[c];
            if !conn.open {
                continue;
            }
            let behind = |d: &Down| matches!(d, Down::Deliver(s, _) if *s <= upto);
            let Some(first) = conn.down.iter().position(behind) else {
                continue;
            };
            let rest: Vec<Down> = conn.down.drain(first..).filter(|d| !behind(d)).collect();
            conn.down
                .push_back(Down::Snapshot(upto, self.relay.snapshot.clone()));
            conn.down.extend(rest);
            self.stats.snapshots += 1;
            self.stats.snapshots_in_place += 1;
        }
    }

    /// Reconnects everyone and runs the network until nothing moves.
    fn heal(&mut self) -> Result<(), String> {
        for _ in 0..1_000 {
            for p in 0..self.peers.len() {
                self.connect(p);
                self.push(p);
            }
            for (lp, cs) in std::mem::take(&mut self.late) {
                self.take(lp, cs, None);
            }
            let mut moved = false;
            for c in 0..self.conns.len() {
                while self.conns[c].open && !self.conns[c].up.is_empty() {
                    self.server_step(c);
                    moved = true;
                }
            }
            for c in 0..self.conns.len() {
                while self.conns[c].open && !self.conns[c].down.is_empty() {
                    self.peer_step(c)?;
                    moved = true;
                }
            }
            let busy = self.peers.iter().any(|p| p.peer.in_flight());
            if !moved && !busy {
                return Ok(());
            }
        }
        Err("the network never went quiet".into())
    }

    fn check(&self) -> Result<(), String> {
        check_tree(&self.server_tree).map_err(|e| format!("server: {e}"))?;
        for sp in &self.peers {
            let p = &sp.peer;
            if !p.local.same_as(&p.synced) {
                return Err(format!("{} has changes it did not push", p.name));
            }
            if !p.synced.same_as(&self.server_tree) || p.synced.nodes != self.server_tree.nodes {
                return Err(format!("{}'s tree is not the server's", p.name));
            }
        }
        let mut present = BTreeSet::new();
        for n in self.server_tree.nodes.values() {
            present.extend(n.blocks.values().map(token_of));
        }
        let lost: Vec<&u64> = self
            .written
            .iter()
            .filter(|t| !self.superseded.contains(t) && !present.contains(t))
            .collect();
        if !lost.is_empty() {
            return Err(format!("writes lost: tokens {lost:?}"));
        }
        Ok(())
    }
}

/// Every name in a directory that exists, every directory with one name
/// and under the root, every file with a name.
fn check_tree(t: &Tree) -> Result<(), String> {
    for ((dir, name), fid) in &t.entries {
        if !t.is_dir(dir) {
            return Err(format!(
                "{:?} is in {dir:x}, not a directory",
                String::from_utf8_lossy(&name)
            ));
        }
        if !t.nodes.contains_key(&fid) {
            return Err(format!("entry for missing file {fid:x}"));
        }
    }
    for fid in t.nodes.keys() {
        if fid == ROOT_ID {
            continue;
        }
        let n = t.names_of(fid).count();
        if n == 0 {
            return Err(format!("file {fid:x} has no name"));
        }
        if t.is_dir(fid) && (n != 1 || !t.is_within(fid, ROOT_ID)) {
            return Err(format!("directory {fid:x} has {n} names or is cut off"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
