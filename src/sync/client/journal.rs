//! The peer's journal, `<store>/sync.journal`: what it applied and had
//! acknowledged since it last saved its state.
//!
//! The state (`sync.state`: the synced tree, the last sequence applied) is
//! rewritten whole, so only once this journal has grown as large as it
//! (at least 4 MiB; `SAVE_JOURNAL_MIN`), while each apply is a commit of
//! the store. Before the journal, killed between the two, a peer came back with a
//! change in its store and not in its synced tree, so the change looked
//! like its own: with the log, delivering that sequence again set it
//! right; behind a cut log (the server's snapshot in place of it), a file
//! that change made and a later one deleted came back. So each batch is
//! written here, and made durable, before the commit that applies it, and
//! each acknowledgement of a push before it is taken; at start the entries
//! the store holds are replayed onto the synced tree, and the journal is
//! emptied each time the state is saved.
//!
//! ## Format
//!
//! ```text
//! entry*: sum u64 LE (the first 8 bytes of the BLAKE3 hash of the frame),
//!         frame (a wire frame, `wire.rs`):
//!           Deliver   a change-set applied as sequence `seq`, or this
//!                     peer's own push acknowledged as `seq` (origin: this
//!                     peer)
//!           Snapshot  a part of a snapshot applied
//! ```
//!
//! An entry is replayed if it is this peer's own push (the store has what
//! it pushed: a push is read from a commit), if the store had applied its
//! sequence (the last sequence applied is kept with every version,
//! `fs::Origin`), or if an own entry follows it (an ack is taken only
//! after everything delivered before it was applied, even a batch that
//! wrote nothing here and so left no version saying so). Replay stops at
//! the first entry that is none of these (its apply did not commit: the
//! server delivers it again), and at a torn or corrupt one (the write the
//! crash cut short; a write that fails is cut off at once, so nothing
//! whole follows a torn entry).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sync::SyncError;
use crate::sync::peer::Peer;
use crate::sync::snapshot::Assembler;
use crate::sync::wire::Msg;

pub(super) const JOURNAL_FILE: &str = "sync.journal";

/// The journal, open for appending.
pub(super) struct Journal {
    file: std::fs::File,
    path: PathBuf,
    /// Its length: entries are whole up to here.
    len: u64,
    /// The last sequence appended: a batch tried again (refused, or
    /// waiting for a writer here) is written once.
    through: u64,
    /// A write failed and the file could not be cut back to its last
    /// whole entry: nothing more may go after the torn one (replay stops
    /// there), so every append fails until the state is saved.
    torn: bool,
}

fn sum(frame: &[u8]) -> [u8; 8] {
    let h = blake3::hash(frame);
    let mut s = [0u8; 8];
    s.copy_from_slice(&h.as_bytes()[..8]);
    s
}

impl Journal {
    pub(super) fn open(store: &Path) -> Result<Journal, SyncError> {
        let path = store.join(JOURNAL_FILE);
        let io = |e| SyncError::io(&path, e);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        if !existed {
            // The first entry's sync makes the file's data durable, not
            // its name.
            std::fs::File::open(store)
                .and_then(|d| d.sync_all())
                .map_err(|e| SyncError::io(store, e))?;
        }
        let len = file.metadata().map_err(io)?.len();
        Ok(Journal {
            file,
            path,
            len,
            through: 0,
            torn: false,
        })
    }

    /// Bytes in it.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `msgs`, which take the peer up to sequence `seq`, and makes
    /// them durable (with what was appended before) if `durable`; nothing
    /// if that sequence was appended already.
    pub(super) fn append(
        &mut self,
        seq: u64,
        msgs: &[Msg],
        durable: bool,
    ) -> Result<(), SyncError> {
        if seq <= self.through {
            return Ok(());
        }
        let mut buf = Vec::new();
        for m in msgs {
            let mut frame = Vec::new();
            m.encode(&mut frame)?;
            buf.extend_from_slice(&sum(&frame));
            buf.extend_from_slice(&frame);
        }
        let io = |e| SyncError::io(&self.path, e);
        if self.torn {
            return Err(io(std::io::Error::other(
                "an earlier write failed part way and could not be undone",
            )));
        }
        if let Err(e) = self.file.write_all(&buf) {
            // A part of the entry may be in the file: cut it off, or the
            // entries after it would never be replayed.
            if self.file.set_len(self.len).is_err() {
                self.torn = true;
            }
            return Err(io(e));
        }
        self.len += buf.len() as u64;
        if durable {
            self.file.sync_data().map_err(io)?;
        }
        self.through = seq;
        Ok(())
    }

    /// Empties it: the state saved holds everything in it.
    pub(super) fn clear(&mut self) -> Result<(), SyncError> {
        // A batch not applied yet is written again at its next try.
        self.through = 0;
        if self.len == 0 && !self.torn {
            return Ok(());
        }
        let io = |e| SyncError::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.len = 0;
        self.torn = false;
        Ok(())
    }
}

/// Brings `peer`, as its saved state left it, up to what the store holds,
/// whose latest version had applied sequence `stored`; returns how many
/// sequences it replayed. The journal is left as it is: save the state,
/// then clear it.
pub(super) fn replay(store: &Path, peer: &mut Peer, stored: u64) -> Result<u64, SyncError> {
    let path = store.join(JOURNAL_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SyncError::io(&path, e)),
    };
    let from = peer.applied;
    let mut at = 0;
    let mut entries = Vec::new();
    while at < bytes.len() {
        let Some(s) = bytes.get(at..at + 8) else {
            break;
        };
        let rest = &bytes[at + 8..];
        let Ok(Some((m, n))) = Msg::decode_frame(rest) else {
            break;
        };
        if s != sum(&rest[..n]) {
            break;
        }
        at += 8 + n;
        entries.push(m);
    }
    let own =
        |m: &Msg| matches!(m, Msg::Deliver { cs, .. } if peer.id != 0 && cs.origin == peer.id);
    // An acknowledgement is taken only after everything delivered before
    // it was applied (a batch that wrote nothing here leaves no version
    // saying so), so all before this peer's last own entry was applied.
    let applied_before = entries.iter().rposition(own).map_or(0, |i| i + 1);
    let mut snapshot = Assembler::default();
    let mut whole = true;
    for (i, m) in entries.into_iter().enumerate() {
        let sure = i < applied_before;
        match m {
            Msg::Deliver { seq, cs } => {
                let own = peer.id != 0 && cs.origin == peer.id;
                if !(sure || own || seq <= stored) || peer.replay(seq, &cs).is_err() {
                    whole = false;
                    break;
                }
            }
            Msg::Snapshot {
                seq,
                last,
                cs,
                stamps,
            } => match snapshot.add(seq, last, &cs, &stamps) {
                Ok(Some((seq, tree))) => {
                    if !sure && seq > stored {
                        whole = false;
                        break;
                    }
                    peer.replay_snapshot(seq, tree);
                }
                Ok(None) => {}
                Err(_) => {
                    whole = false;
                    break;
                }
            },
            _ => {
                whole = false;
                break;
            }
        }
    }
    if !whole || at < bytes.len() {
        tracing::info!(
            path = %path.display(),
            "sync: the journal's tail was not applied here (or was cut short); the server sends it again"
        );
    }
    Ok(peer.applied - from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Kind, Time};
    use crate::sync::tree::{ChangeSet, Meta, Node, ROOT_ID, Stamp, Tree, diff};

    /// A change-set of `origin` that adds file `fid` named `name`.
    fn adds(t: &mut Tree, origin: u32, fid: u128, name: &str) -> ChangeSet {
        let before = t.clone();
        t.put_node(
            fid,
            Node {
                meta: Meta {
                    kind: Kind::File,
                    perm: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    size: 0,
                    mtime: Time::default(),
                },
                blocks: Default::default(),
                xattrs: Default::default(),
                target: vec![],
                changed: Stamp::default(),
                renamed: Stamp::default(),
            },
        );
        t.link((ROOT_ID, name.as_bytes().to_vec()), fid);
        ChangeSet {
            origin,
            origin_name: format!("p{origin}"),
            counter: fid as u64,
            base: 0,
            time: 0,
            ops: diff(&before, t, None),
        }
    }

    fn names(p: &Peer) -> Vec<Vec<u8>> {
        p.synced.entries.keys().map(|(_, n)| n.clone()).collect()
    }

    #[test]
    fn replay_takes_what_the_store_applied_and_this_peers_own_pushes_and_stops_at_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::default();
        let mut j = Journal::open(dir.path()).unwrap();
        let c1 = adds(&mut t, 2, 10, "one");
        let c2 = adds(&mut t, 1, 11, "mine");
        let c3 = adds(&mut t, 2, 12, "three");
        let c4 = adds(&mut t, 2, 13, "four");
        j.append(1, &[Msg::Deliver { seq: 1, cs: c1 }], true)
            .unwrap();
        j.append(2, &[Msg::Deliver { seq: 2, cs: c2 }], true)
            .unwrap();
        j.append(3, &[Msg::Deliver { seq: 3, cs: c3 }], true)
            .unwrap();
        j.append(4, &[Msg::Deliver { seq: 4, cs: c4 }], true)
            .unwrap();
        // The store applied up to 1: the own push at 2 is replayed, 3 was
        // not applied here, and what follows it waits too.
        let mut p = Peer::new(1, "p1", Tree::default());
        assert_eq!(replay(dir.path(), &mut p, 1).unwrap(), 2);
        assert_eq!(
            (p.applied, names(&p)),
            (2, vec![b"mine".to_vec(), b"one".to_vec()])
        );
        // Up to 4: all of it; again from a state that had 2 already.
        assert_eq!(replay(dir.path(), &mut p, 4).unwrap(), 2);
        assert_eq!(p.applied, 4);
        // A torn tail and a corrupt entry end the replay there.
        let path = dir.path().join(JOURNAL_FILE);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let mut p = Peer::new(1, "p1", Tree::default());
        assert_eq!(replay(dir.path(), &mut p, 4).unwrap(), 3);
        let mut bad = whole.clone();
        bad[9] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let mut p = Peer::new(1, "p1", Tree::default());
        assert_eq!(replay(dir.path(), &mut p, 4).unwrap(), 0);
        // A batch tried again is written once; cleared, it starts over.
        let mut j = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let mut t = Tree::default();
        let c1 = adds(&mut t, 2, 10, "one");
        let entry = [Msg::Deliver { seq: 1, cs: c1 }];
        j.append(1, &entry, false).unwrap();
        let once = std::fs::metadata(&path).unwrap().len();
        j.append(1, &entry, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), once);
    }

    #[test]
    fn a_batch_that_wrote_nothing_before_an_own_ack_is_replayed_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::default();
        let mut j = Journal::open(dir.path()).unwrap();
        // 2 changed nothing here, so no version recorded it; the ack of
        // this peer's push at 3 came after it was applied.
        let c2 = adds(&mut t, 2, 10, "same");
        let c3 = adds(&mut t, 1, 11, "mine");
        let c4 = adds(&mut t, 2, 12, "later");
        j.append(2, &[Msg::Deliver { seq: 2, cs: c2 }], true)
            .unwrap();
        j.append(3, &[Msg::Deliver { seq: 3, cs: c3 }], false)
            .unwrap();
        j.append(4, &[Msg::Deliver { seq: 4, cs: c4 }], true)
            .unwrap();
        let mut p = Peer::new(1, "p1", Tree::default());
        p.applied = 1;
        assert_eq!(replay(dir.path(), &mut p, 1).unwrap(), 2);
        assert_eq!(
            (p.applied, names(&p)),
            (3, vec![b"mine".to_vec(), b"same".to_vec()])
        );
    }

    #[test]
    fn a_write_that_cannot_be_undone_fails_every_append_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .expect("/dev/full: this test needs it");
        let mut j = Journal {
            file: full,
            path: dir.path().join(JOURNAL_FILE),
            len: 0,
            through: 0,
            torn: false,
        };
        let mut t = Tree::default();
        let entry = [Msg::Deliver {
            seq: 1,
            cs: adds(&mut t, 2, 10, "one"),
        }];
        assert!(j.append(1, &entry, true).is_err());
        assert!(j.torn, "/dev/full cannot be cut back");
        assert_eq!(j.through, 0, "nothing was appended");
        let e = j.append(2, &entry, true).unwrap_err().to_string();
        assert!(e.contains("could not be undone"), "{e}");
    }

    #[test]
    fn a_snapshot_in_the_journal_becomes_the_synced_tree_once_the_store_applied_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::default();
        adds(&mut t, 2, 10, "one");
        adds(&mut t, 3, 11, "two");
        let mut j = Journal::open(dir.path()).unwrap();
        // Parts of one file each.
        j.append(9, &crate::sync::snapshot::parts(&t, 9, 1), true)
            .unwrap();
        let mut p = Peer::new(1, "p1", Tree::default());
        assert_eq!(
            replay(dir.path(), &mut p, 8).unwrap(),
            0,
            "not applied here"
        );
        assert_eq!(replay(dir.path(), &mut p, 9).unwrap(), 9);
        assert_eq!(names(&p), vec![b"one".to_vec(), b"two".to_vec()]);
    }
}
