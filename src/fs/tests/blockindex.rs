//! The block index against the block entries: built over files a store
//! already has, kept exact by every commit after, and kept by a remount.

use super::*;

fn wrong(fs: &Fs) -> Vec<String> {
    fs.check_block_index().unwrap()
}

/// The version the store's index is exact in (its `MH`).
fn exact(fs: &Fs) -> u64 {
    let snap = fs.store().latest().unwrap();
    let v = snap.get(crate::fs::blockindex::MARKER).unwrap().unwrap();
    u64::from_le_bytes(v.try_into().unwrap())
}

fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

#[test]
fn a_block_index_built_over_existing_files_is_kept_exact_by_later_commits_and_remounts() {
    let dir = tempfile::tempdir().unwrap();
    // Blocks of 4 KiB: the large ones are extents, a short tail is inline.
    let big: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8).collect();
    let (a, b);
    {
        let fs = Fs::mount(dir.path(), opts()).unwrap();
        a = fs.create(ROOT_CTX, ROOT, b"a", 0o644).unwrap().0.ino;
        fs.write(a, 0, &big).unwrap();
        b = fs.create(ROOT_CTX, ROOT, b"b", 0o644).unwrap().0.ino;
        fs.write(b, 0, b"small").unwrap();
        fs.commit("files").unwrap();
        // No index yet: nothing is found, however the store looks.
        let snap = fs.store().latest().unwrap();
        assert_eq!(fs.block_by_hash(&snap, &hash(&big[..4096])).unwrap(), None);
        drop(snap);

        fs.keep_block_index().unwrap();
        assert_eq!(wrong(&fs), Vec::<String>::new());
        let snap = fs.store().latest().unwrap();
        for (i, part) in big.chunks(4096).enumerate() {
            let found = fs.block_by_hash(&snap, &hash(part)).unwrap();
            assert_eq!(found.as_deref(), Some(part), "block {i} of a");
        }
        assert_eq!(
            fs.block_by_hash(&snap, &hash(b"small")).unwrap().as_deref(),
            Some(&b"small"[..])
        );
        drop(snap);

        // Overwrite one block, cut a file, drop another, copy a block into
        // a third: each commit leaves the index exact.
        fs.write(a, 4096, &[9u8; 4096]).unwrap();
        fs.commit("overwrite").unwrap();
        assert_eq!(wrong(&fs), Vec::<String>::new());
        let snap = fs.store().latest().unwrap();
        assert!(!fs.has_block(&snap, &hash(&big[4096..8192])).unwrap());
        assert!(fs.has_block(&snap, &hash(&[9u8; 4096])).unwrap());
        drop(snap);
        fs.setattr(
            a,
            SetAttr {
                size: Some(4096),
                ..Default::default()
            },
        )
        .unwrap();
        fs.unlink(ROOT, b"b").unwrap();
        fs.release(b).unwrap();
        let c = fs.create(ROOT_CTX, ROOT, b"c", 0o644).unwrap().0.ino;
        fs.write(c, 8192, &big[..4096]).unwrap();
        fs.commit("cut, drop, copy").unwrap();
        assert_eq!(wrong(&fs), Vec::<String>::new());
        let snap = fs.store().latest().unwrap();
        assert!(!fs.has_block(&snap, &hash(b"small")).unwrap());
        assert!(!fs.has_block(&snap, &hash(&[9u8; 4096])).unwrap());
        assert!(fs.has_block(&snap, &hash(&big[..4096])).unwrap());
        drop(snap);
        fs.release(a).unwrap();
        fs.release(c).unwrap();
        // A commit that changes no block moves the newest version on.
        fs.mkdir(ROOT_CTX, ROOT, b"dir", 0o755).unwrap();
        fs.commit("no block").unwrap();
        fs.shutdown().unwrap();
    }
    // The clean close saved the index: exact in the newest version, which
    // a remount (that does not ask for it) keeps from there.
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    let saved = exact(&fs);
    assert_eq!(Some(saved), fs.store().latest_version());
    let snap = fs.store().latest().unwrap();
    assert!(fs.has_block(&snap, &hash(&big[..4096])).unwrap());
    drop(snap);
    fs.unlink(ROOT, b"a").unwrap();
    let d = fs.create(ROOT_CTX, ROOT, b"d", 0o644).unwrap().0.ino;
    fs.write(d, 0, b"after the remount").unwrap();
    fs.commit("after").unwrap();
    assert_eq!(wrong(&fs), Vec::<String>::new());
    let snap = fs.store().latest().unwrap();
    assert!(fs.has_block(&snap, &hash(b"after the remount")).unwrap());
    // a's first block is gone with a, but c holds the same bytes.
    assert!(fs.has_block(&snap, &hash(&big[..4096])).unwrap());
    drop(snap);
    // Enough commits of new blocks and overwrites to fold the log into
    // the index several times; exact after each, every block found.
    let e = fs.create(ROOT_CTX, ROOT, b"e", 0o644).unwrap().0.ino;
    for i in 0..120u64 {
        let block = vec![(i % 251) as u8 + 1; 4096];
        fs.write(e, (i % 50) * 4096, &block).unwrap();
        fs.write(d, 0, &i.to_le_bytes()).unwrap();
        fs.commit("loop").unwrap();
        assert_eq!(wrong(&fs), Vec::<String>::new(), "after commit {i}");
        let snap = fs.store().latest().unwrap();
        assert!(
            fs.has_block(&snap, &hash(&block)).unwrap(),
            "block of commit {i}"
        );
    }
    assert!(exact(&fs) > saved, "120 commits of 4 changes fold at 64");
    // Held changes lost with the process (no clean close): the next open
    // finds the index behind the newest version and rebuilds it.
    let lost = vec![0xab; 4096];
    fs.write(e, 60 * 4096, &lost).unwrap();
    fs.synced_through(7);
    fs.commit("held").unwrap();
    let before = exact(&fs);
    drop(fs);
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    assert!(exact(&fs) > before, "rebuilt");
    // The rebuild's versions carry on how far sync had applied.
    let newest = fs.store().versions().last().map(|v| v.tag.clone());
    assert_eq!(
        crate::fs::history::Origin::of_tag(&newest.unwrap_or_default()).seq,
        7
    );
    assert_eq!(wrong(&fs), Vec::<String>::new());
    let snap = fs.store().latest().unwrap();
    assert!(fs.has_block(&snap, &hash(&lost)).unwrap());
}

/// Commits that change no block still move the newest version on: the
/// clean close names it, and the next open trusts the index as it is.
/// A store with one file of one block, closed keeping a block index.
fn indexed_store_of_one_block(dir: &std::path::Path) {
    let fs = Fs::mount(dir, opts()).unwrap();
    let f = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap().0.ino;
    fs.write(f, 0, &[1u8; 4096]).unwrap();
    fs.release(f).unwrap();
    fs.keep_block_index().unwrap();
    fs.shutdown().unwrap();
}

#[test]
fn a_clean_close_after_commits_that_change_no_block_leaves_nothing_to_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let rebuilds = |fs: &Fs| {
        (fs.store().versions().iter())
            .filter(|v| v.cause == "block index")
            .count()
    };
    indexed_store_of_one_block(dir.path());
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    for i in 0..3u8 {
        fs.mkdir(ROOT_CTX, ROOT, &[b'd', b'0' + i], 0o755).unwrap();
        fs.commit("no block").unwrap();
    }
    let before = rebuilds(&fs);
    fs.shutdown().unwrap();
    drop(fs);
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    assert_eq!(Some(exact(&fs)), fs.store().latest_version());
    // One commit at the close names the newest version; a rebuild would
    // have taken two (the old keys out, the new ones in).
    assert_eq!(rebuilds(&fs), before + 1);
    assert_eq!(wrong(&fs), Vec::<String>::new());
}

/// An offline `gc` or retention change makes versions that change no
/// block: the index stays exact in them, and the next open rebuilds
/// nothing.
#[test]
fn an_offline_gc_or_retention_change_leaves_the_block_index_exact() {
    let dir = tempfile::tempdir().unwrap();
    let rebuilds = |s: &Store| {
        (s.versions().iter())
            .filter(|v| v.cause == "block index")
            .count()
    };
    indexed_store_of_one_block(dir.path());
    let before;
    {
        let s = Store::open(dir.path(), opts().store).unwrap();
        crate::fs::commit_unmounted(&s, "gc", |_| Ok(())).unwrap();
        let policy = crate::store::Retention::default();
        crate::fs::commit_unmounted(&s, "retention", |t| {
            t.set_retention(policy);
            Ok(())
        })
        .unwrap();
        before = rebuilds(&s);
        s.close().unwrap();
    }
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    assert_eq!(Some(exact(&fs)), fs.store().latest_version());
    assert_eq!(rebuilds(fs.store()), before, "rebuilt at open");
    assert_eq!(wrong(&fs), Vec::<String>::new());
}

/// `fsck`'s check of the index (`blockindex::check`): clean on a kept
/// index, both kinds of damage found and counted, and an index marked
/// behind is rebuilt whole by the next open.
#[test]
fn the_index_check_finds_a_missing_and_a_wrong_key_and_a_rebuild_mends_both() {
    use crate::fs::blockindex::{MARKER, behind, check};
    let dir = tempfile::tempdir().unwrap();
    {
        let fs = Fs::mount(dir.path(), opts()).unwrap();
        let f = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap().0.ino;
        fs.write(f, 0, &[1u8; 3 * 4096]).unwrap();
        fs.write(f, 3 * 4096, &[2u8; 4096]).unwrap();
        fs.release(f).unwrap();
        fs.keep_block_index().unwrap();
        fs.shutdown().unwrap();
    }
    let s = Store::open(dir.path(), opts().store).unwrap();
    let clean = check(&s.latest().unwrap()).unwrap();
    assert!(clean.kept && clean.exact, "{clean:?}");
    assert_eq!((clean.blocks, clean.keys, clean.wrong), (4, 4, 0));
    // Damage, with MH kept exact: one key out, one naming a wrong hash.
    let keys: Vec<Vec<u8>> = (s.latest().unwrap().range(&b"H"[..]..&b"I"[..]).unwrap())
        .map(|r| r.unwrap().0.to_vec())
        .collect();
    crate::fs::commit_unmounted(&s, "damage", |t| {
        t.delete(&keys[0])?;
        let mut bogus = keys[1].clone();
        bogus[1] ^= 0xff;
        t.delete(&keys[1])?;
        t.put(&bogus, &[])
    })
    .unwrap();
    let found = check(&s.latest().unwrap()).unwrap();
    assert!(found.exact, "{found:?}");
    // Two blocks without their key, and one key with another hash.
    assert_eq!(found.wrong, 3, "{:?}", found.problems);
    crate::fs::commit_unmounted(&s, "fsck", behind).unwrap();
    let marked = check(&s.latest().unwrap()).unwrap();
    assert!(marked.kept && !marked.exact, "{marked:?}");
    assert!(s.latest().unwrap().get(MARKER).unwrap().is_some());
    s.close().unwrap();
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    let mended = check(&fs.store().latest().unwrap()).unwrap();
    assert!(mended.exact, "{mended:?}");
    assert_eq!((mended.blocks, mended.keys, mended.wrong), (4, 4, 0));
}
