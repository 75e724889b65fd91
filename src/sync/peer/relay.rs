//! The server's side of the protocol without I/O, for the simulation and
//! the tests: the log, its cut, and who pushed what.

use std::collections::BTreeMap;

use super::super::apply::apply;
use super::super::tree::{ChangeSet, PeerId, Tree};

/// The server's side, without I/O: the volume's log and who pushed what.
/// The log may be cut: the change-sets up to `cut` are then folded into
/// `snapshot` (the volume as of `cut`), and a peer that has applied less
/// gets the snapshot in their place ([`Peer::on_snapshot`]).
#[derive(Default)]
pub struct Relay {
    /// The change-sets after `cut`, in order.
    pub log: Vec<ChangeSet>,
    pub cut: u64,
    pub snapshot: Tree,
    /// Per peer, the last push taken: its counter and sequence.
    pub last_taken: BTreeMap<PeerId, (u64, u64)>,
}

impl Relay {
    /// The last sequence taken.
    pub fn head(&self) -> u64 {
        self.cut + self.log.len() as u64
    }

    /// Takes a push from `origin` (as the connection's credential says):
    /// the next sequence, or `None` for one at or below the last taken.
    pub fn take(&mut self, origin: PeerId, name: &str, mut cs: ChangeSet, now: i64) -> Option<u64> {
        let last = self.last_taken.get(&origin).map_or(0, |t| t.0);
        if cs.counter <= last {
            return None;
        }
        let counter = cs.counter;
        cs.origin = origin;
        cs.origin_name = name.to_string();
        cs.time = now;
        self.log.push(cs);
        self.last_taken.insert(origin, (counter, self.head()));
        Some(self.head())
    }

    /// Whether a peer that has applied `applied` needs the snapshot first.
    pub fn needs_snapshot(&self, applied: u64) -> bool {
        applied < self.cut
    }

    /// The change-sets after `applied` that the log still holds (after
    /// the cut), with their sequences.
    pub fn since(&self, applied: u64) -> impl Iterator<Item = (u64, &ChangeSet)> {
        let from = (applied.max(self.cut) - self.cut) as usize;
        let from = from.min(self.log.len());
        let cut = self.cut;
        self.log[from..]
            .iter()
            .enumerate()
            .map(move |(i, cs)| (cut + (from + i + 1) as u64, cs))
    }

    /// Cuts the log at sequence `upto` (at most the head): the change-sets
    /// up to it are applied to the snapshot, with the function every peer
    /// applies them with, and dropped.
    pub fn compact(&mut self, upto: u64) {
        let upto = upto.min(self.head());
        if upto <= self.cut {
            return;
        }
        let n = (upto - self.cut) as usize;
        for (i, cs) in self.log.drain(..n).enumerate() {
            apply(&mut self.snapshot, self.cut + i as u64 + 1, &cs);
        }
        self.cut = upto;
    }
}
