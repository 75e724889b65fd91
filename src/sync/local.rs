//! A peer's own filesystem as sync sees it: its last commit read as a
//! [`Tree`] (through `fs::remote`), and changes to that tree written back
//! into it as a [`RemoteChange`].
//!
//! What does not travel: a directory's size and modification time (each
//! peer's own, changed by the names made in it there), access and change
//! times, inode numbers.

use std::collections::BTreeSet;

use super::SyncError;
use super::tree::{FileId, Hash, Meta, Node, Op, ROOT_ID, Stamp, Tree};
use crate::fs::Fs;
#[cfg(test)]
use crate::fs::remote::Committed;
use crate::fs::remote::{FileState, ROOT_FILE_ID, RemoteChange, RemoteFile};
use crate::fs::{Kind, Time};
use crate::store::Snapshot;

const _: () = assert!(ROOT_ID == ROOT_FILE_ID);

/// The meta of a file as it travels.
pub fn meta_of(i: &crate::fs::Inode) -> Meta {
    let dir = i.kind == Kind::Dir;
    Meta {
        kind: i.kind,
        perm: i.perm,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        size: if dir { 0 } else { i.size },
        mtime: if dir { Time::default() } else { i.mtime },
    }
}

/// A file as a tree node.
pub fn node_of(f: &FileState) -> Node {
    Node {
        meta: meta_of(&f.inode),
        blocks: f.blocks.iter().copied().collect(),
        xattrs: f.xattrs.iter().cloned().collect(),
        target: f.target.clone(),
        changed: Stamp::default(),
        renamed: Stamp::default(),
    }
}

/// A commit as a tree.
#[cfg(test)]
pub fn tree_of(c: &Committed) -> Tree {
    let mut t = Tree::default();
    for f in &c.files {
        t.nodes.insert(f.id, node_of(f).into());
    }
    for (dir, name, fid) in &c.names {
        t.link((*dir, name.clone()), *fid);
    }
    t
}

/// Moves a tree's changes out of memory (`TreeStore::spill`) and
/// returns the files whose changes went.
pub type Spill<'a> = dyn FnMut(&mut Tree) -> Result<Vec<FileId>, SyncError> + 'a;

/// The commit `snap` shows as a tree, read a file and an entry at a time
/// and layered over `synced` (a peer's local tree read whole): it holds
/// of its own only what differs from `synced`, and nothing of the volume
/// is held whole while it is read. Whenever it holds `spill_at` changes,
/// `spill` moves them out of memory. Returns it and the files that
/// differ, but for those spilled (the tree names them).
pub fn read_whole(
    fs: &Fs,
    snap: &Snapshot<'_>,
    synced: &Tree,
    spill_at: usize,
    spill: &mut Spill<'_>,
) -> Result<(Tree, BTreeSet<FileId>), SyncError> {
    let mut t = synced.clone();
    t.journal = Default::default();
    let mut differ = BTreeSet::new();
    let mut due = |t: &mut Tree, differ: &mut BTreeSet<FileId>| -> Result<(), SyncError> {
        if t.changes() >= spill_at {
            for f in spill(t)? {
                differ.remove(&f);
            }
        }
        Ok(())
    };
    fs.each_file::<SyncError>(snap, &mut |f| {
        let n = node_of(&f);
        if !synced.nodes.get(&f.id).is_some_and(|s| s.same_content(&n)) {
            t.nodes.insert(f.id, n.into());
            differ.insert(f.id);
            due(&mut t, &mut differ)?;
        }
        Ok(())
    })?;
    // Files the commit does not have (every file but the root has names).
    for (fid, _) in &synced.names {
        if !fs.has_file_in(snap, fid)? {
            t.remove_file(fid);
            differ.insert(fid);
            due(&mut t, &mut differ)?;
        }
    }
    fs.each_entry::<SyncError>(snap, &mut |dir, name, fid| {
        let key = (dir, name.to_vec());
        if t.entries.get(&key) != Some(fid) {
            differ.extend(t.unlink(&key));
            t.link(key, fid);
            differ.insert(fid);
            due(&mut t, &mut differ)?;
        }
        Ok(())
    })?;
    // Entries the commit does not have.
    for ((dir, name), fid) in &synced.entries {
        if t.entries.get(&(dir, name.clone())) == Some(fid)
            && fs.entry_in(snap, dir, &name)? != Some(fid)
        {
            t.unlink(&(dir, name));
            differ.insert(fid);
            due(&mut t, &mut differ)?;
        }
    }
    Ok((t, differ))
}

/// Blocks the change needs that are not at hand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{} blocks are not here, the first {}", .0.len(), hex(&.0[0]))]
pub struct MissingBlocks(pub Vec<Hash>);

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// `ops` (a change of this peer's tree, worked out against commit `base`)
/// as a change of its filesystem; `block` gives a block's bytes by hash.
/// Fails naming every block `block` did not have.
pub fn to_remote(
    ops: &[Op],
    base: u64,
    block: &mut dyn FnMut(&Hash) -> Option<Vec<u8>>,
) -> Result<RemoteChange, MissingBlocks> {
    let mut missing = Vec::new();
    let mut out = RemoteChange {
        base,
        ..Default::default()
    };
    for op in ops {
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
                let mut data = Vec::with_capacity(blocks.len());
                for (i, h) in blocks {
                    data.push((
                        *i,
                        match h {
                            Some(h) => match block(h) {
                                Some(b) => Some(b),
                                None => {
                                    missing.push(*h);
                                    None
                                }
                            },
                            None => None,
                        },
                    ));
                }
                out.files.push(RemoteFile {
                    id: *fid,
                    kind: meta.kind,
                    perm: meta.perm,
                    uid: meta.uid,
                    gid: meta.gid,
                    rdev: meta.rdev,
                    size: meta.size,
                    mtime: meta.mtime,
                    whole: *whole,
                    cut: *cut,
                    blocks: data,
                    xattrs: xattrs.clone(),
                    target: target.clone(),
                });
            }
            Op::Names {
                fid,
                removed,
                added,
            } => {
                out.unlinked.extend(removed.iter().cloned());
                out.linked
                    .extend(added.iter().map(|(d, n)| (*d, n.clone(), *fid)));
            }
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        missing.sort_unstable();
        missing.dedup();
        Err(MissingBlocks(missing))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fs::remote::Applied;
    use crate::fs::{Ctx, Fs, FsOptions, Origin, SetAttr};
    use crate::sync::tree::FileId;
    use crate::sync::tree::diff;

    fn fs(dir: &std::path::Path) -> Fs {
        let opts = FsOptions {
            shards: 2,
            block_size: 4096,
            io_threads: false,
            ..Default::default()
        };
        Fs::mount(dir, opts).unwrap()
    }

    /// Where each block of a tree is: hash → (file, index).
    fn block_places(t: &Tree) -> BTreeMap<Hash, (FileId, u64)> {
        let mut out = BTreeMap::new();
        for (fid, n) in &t.nodes {
            for (i, h) in &n.blocks {
                out.entry(*h).or_insert((fid, *i));
            }
        }
        out
    }

    const CTX: Ctx = Ctx {
        uid: 0,
        gid: 0,
        umask: 0o022,
    };

    /// Sends the difference of `a`'s commits from `from` to its latest to
    /// `b`, as the sync client would, as sequence `seq` of peer 9; returns
    /// `a`'s tree now.
    fn send(a: &Fs, from: &Tree, b: &Fs, seq: u64) -> Tree {
        let now = tree_of(&a.committed().unwrap());
        let places = block_places(&now);
        let ops = diff(from, &now, None);
        let base = b.store().latest_version().unwrap();
        let version = a.store().latest_version().unwrap();
        let change = to_remote(&ops, base, &mut |h| {
            let (fid, i) = places.get(h)?;
            a.committed_block(version, *fid, *i).ok()
        })
        .unwrap();
        assert!(matches!(
            b.apply_remote(&change, "sync test", Origin { peer: 9, seq })
                .unwrap(),
            Applied::Done { .. }
        ));
        now
    }

    /// A tree read whole a file at a time over the synced one (in memory,
    /// or in a tree store) is the commit's tree, and holds of its own, and
    /// names as differing, exactly the files a push would carry.
    #[test]
    fn a_tree_read_whole_a_file_at_a_time_is_the_commit_and_names_what_differs() {
        for stored in [false, true] {
            let (da, dt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let a = fs(da.path());
            let d = a.mkdir(CTX, 1, b"dir", 0o750).unwrap();
            let sub = a.mkdir(CTX, d.ino, b"sub", 0o755).unwrap();
            let (f, _) = a.create(CTX, d.ino, b"f.txt", 0o640).unwrap();
            a.write(f.ino, 0, &[7u8; 9000]).unwrap();
            a.link(f.ino, sub.ino, b"hard").unwrap();
            let (g, _) = a.create(CTX, 1, b"g", 0o644).unwrap();
            a.write(g.ino, 0, b"gone soon").unwrap();
            let (k, _) = a.create(CTX, 1, b"kept", 0o644).unwrap();
            a.write(k.ino, 0, b"as it was").unwrap();
            a.symlink(CTX, 1, b"ln", b"dir/f.txt").unwrap();
            a.commit("test").unwrap();
            let mut synced = tree_of(&a.committed().unwrap());
            let trees = crate::sync::tree::TreeStore::open(dt.path()).unwrap();
            if stored {
                let mut other = synced.clone();
                trees.fold(&mut synced, &mut other, 0, "test").unwrap();
                assert!(synced.nodes.is_sourced());
            }

            a.rename(d.ino, b"f.txt", 1, b"moved.txt", RenameMode::Replace)
                .unwrap();
            a.write(f.ino, 100, b"middle").unwrap();
            a.unlink(sub.ino, b"hard").unwrap();
            a.rmdir(d.ino, b"sub").unwrap();
            a.unlink(1, b"g").unwrap();
            let (n, _) = a.create(CTX, d.ino, b"new", 0o600).unwrap();
            a.write(n.ino, 0, b"new here").unwrap();
            a.setxattr(d.ino, b"user.k", b"v", false, false).unwrap();
            a.commit("test").unwrap();

            let now = tree_of(&a.committed().unwrap());
            let snap = a.store().latest().unwrap();
            let (local, differ) = read_whole(&a, &snap, &synced, usize::MAX, &mut |_| {
                unreachable!("nothing spills")
            })
            .unwrap();
            assert!(local.same_as(&now), "stored {stored}");
            assert_eq!(local.names, now.names, "stored {stored}");
            let want: BTreeSet<FileId> = diff(&synced, &now, None).iter().map(Op::fid).collect();
            assert_eq!(differ, want, "stored {stored}");
            assert!(!differ.contains(&now.entries.get(&(ROOT_ID, b"kept".to_vec())).unwrap()));
            assert!(local.nodes.same_base(&synced.nodes));
            assert!(
                local.changes() <= 4 * want.len() + synced.changes(),
                "stored {stored}: {} changes of its own",
                local.changes()
            );
            assert!(trees.damage().is_none());
        }
    }

    #[test]
    fn a_filesystem_sent_as_changes_arrives_whole_and_follows_renames_and_deletes() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (fs(da.path()), fs(db.path()));
        let d = a.mkdir(CTX, 1, b"dir", 0o750).unwrap();
        let sub = a.mkdir(CTX, d.ino, b"sub", 0o755).unwrap();
        let (f, _) = a.create(CTX, d.ino, b"f.txt", 0o640).unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        a.write(f.ino, 0, &data).unwrap();
        a.link(f.ino, sub.ino, b"hard").unwrap();
        a.symlink(CTX, 1, b"ln", b"dir/f.txt").unwrap();
        a.setxattr(f.ino, b"user.k", b"v", false, false).unwrap();
        a.commit("test").unwrap();

        let sent = send(&a, &Tree::default(), &b, 1);
        assert!(tree_of(&b.committed().unwrap()).same_as(&sent));
        let bd = b.lookup(1, b"dir").unwrap();
        let bf = b.lookup(bd.ino, b"f.txt").unwrap();
        assert_eq!(b.read(bf.ino, 0, 30_000).unwrap(), data);
        assert_eq!((bf.nlink, bf.perm, bd.nlink), (2, 0o640, 3));
        assert_eq!(
            b.readlink(b.lookup(1, b"ln").unwrap().ino).unwrap(),
            b"dir/f.txt"
        );
        assert_eq!(b.getxattr(bf.ino, b"user.k").unwrap(), b"v");

        // Renames, a write in the middle, a truncate, deletes.
        a.rename(d.ino, b"f.txt", 1, b"moved.txt", RenameMode::Replace)
            .unwrap();
        a.write(f.ino, 5000, b"middle").unwrap();
        a.setattr(
            f.ino,
            SetAttr {
                size: Some(9000),
                ..Default::default()
            },
        )
        .unwrap();
        a.unlink(sub.ino, b"hard").unwrap();
        a.rmdir(d.ino, b"sub").unwrap();
        a.commit("test").unwrap();
        let again = send(&a, &sent, &b, 2);
        assert!(tree_of(&b.committed().unwrap()).same_as(&again));
        let moved = b.lookup(1, b"moved.txt").unwrap();
        assert_eq!(moved.ino, bf.ino, "a rename keeps the inode");
        let mut want = data[..9000].to_vec();
        want[5000..5006].copy_from_slice(b"middle");
        assert_eq!(b.read(moved.ino, 0, 30_000).unwrap(), want);
        assert_eq!(moved.nlink, 1);
        assert_eq!(b.lookup(bd.ino, b"sub").unwrap_err().errno(), libc::ENOENT);
        assert_eq!(b.getattr(bd.ino).unwrap().nlink, 2);
    }

    #[test]
    fn a_change_worked_out_before_a_local_write_is_refused() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (fs(da.path()), fs(db.path()));
        a.mkdir(CTX, 1, b"x", 0o755).unwrap();
        a.commit("test").unwrap();
        let now = tree_of(&a.committed().unwrap());
        let change = to_remote(
            &diff(&Tree::default(), &now, None),
            b.store().latest_version().unwrap(),
            &mut |_| None,
        )
        .unwrap();
        b.mkdir(CTX, 1, b"y", 0o755).unwrap();
        assert!(matches!(
            b.apply_remote(&change, "t", Origin::default()).unwrap(),
            Applied::Moved
        ));
        b.commit("test").unwrap();
        assert!(matches!(
            b.apply_remote(&change, "t", Origin::default()).unwrap(),
            Applied::Moved
        ));
    }

    /// Each version records where its changes came from: an applied
    /// change-set its peer and sequence, this mount's own changes the
    /// sequence they build on, after a remount too.
    #[test]
    fn every_version_records_its_origin_peer_and_the_sequence_it_built_on() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = fs(da.path());
        let b = fs(db.path());
        let last = |b: &Fs| Origin::of_tag(&b.store().versions().last().unwrap().tag);
        b.mkdir(CTX, 1, b"mine", 0o755).unwrap();
        b.commit("test").unwrap();
        assert_eq!(last(&b), Origin::default(), "never synced");
        a.mkdir(CTX, 1, b"theirs", 0o755).unwrap();
        a.commit("test").unwrap();
        send(&a, &Tree::default(), &b, 5);
        assert_eq!(last(&b), Origin { peer: 9, seq: 5 });
        b.mkdir(CTX, 1, b"after", 0o755).unwrap();
        b.commit("test").unwrap();
        assert_eq!(last(&b), Origin { peer: 0, seq: 5 });
        b.synced_through(6);
        b.mkdir(CTX, 1, b"later", 0o755).unwrap();
        b.commit("test").unwrap();
        assert_eq!(last(&b), Origin { peer: 0, seq: 6 });
        let json = String::from_utf8(b.versions_json()).unwrap();
        assert!(json.contains("\"origin\": 9, \"synced\": 5"), "{json}");
        drop(b);
        let b = fs(db.path());
        b.mkdir(CTX, 1, b"remounted", 0o755).unwrap();
        b.commit("test").unwrap();
        assert_eq!(last(&b), Origin { peer: 0, seq: 6 }, "after a remount");
    }

    #[test]
    fn versions_that_only_free_space_keep_the_sequence_sync_applied() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = fs(da.path());
        let b = fs(db.path());
        let last = |b: &Fs| Origin::of_tag(&b.store().versions().last().unwrap().tag);
        a.mkdir(CTX, 1, b"theirs", 0o755).unwrap();
        a.commit("test").unwrap();
        send(&a, &Tree::default(), &b, 5);
        // A mounted gc and retention change: versions of their own.
        let before = b.store().latest_version();
        b.gc().unwrap();
        assert_ne!(b.store().latest_version(), before, "gc made a version");
        assert_eq!(last(&b), Origin { peer: 0, seq: 5 });
        b.set_retention(crate::store::Retention::default()).unwrap();
        assert_eq!(last(&b), Origin { peer: 0, seq: 5 });
        assert_eq!(b.synced_seq(), 5);
        drop(b);
        // One made with no tag (as a store written before tags were
        // carried): the mount finds the newest tagged version.
        {
            let s = crate::store::Store::open(db.path(), Default::default()).unwrap();
            let t = s.begin_write().unwrap();
            t.commit("untagged").unwrap();
            assert_eq!(Origin::carried(&s), Origin { peer: 0, seq: 5 });
        }
        let b = fs(db.path());
        assert_eq!(b.synced_seq(), 5, "from the newest tagged version");
    }

    use crate::fs::RenameMode;
}
