//! Unit tests of the filesystem core, without a mount.

use super::*;
use data::patch_block;

mod blockindex;
mod coherence;
mod commit;
mod model;
mod rename;
mod space;

const ROOT_CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    umask: 0,
};

fn opts() -> FsOptions {
    FsOptions {
        shards: 3,
        block_size: 4096,
        dirty_limit: 1 << 20,
        flush_interval: Duration::from_secs(3600),
        io_threads: true,
        history_name: ".zippy".into(),
        store: StoreOptions {
            map_size: 1 << 32,
            ..StoreOptions::default()
        },
    }
}

fn fresh() -> (tempfile::TempDir, Fs) {
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    (dir, fs)
}

fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.expect_err("expected an error").errno()
}

fn names(fs: &Fs, dir: u64) -> Vec<String> {
    let fh = fs.opendir(dir).unwrap();
    let v = fs.readdir(fh, dir, 0).unwrap();
    fs.releasedir(fh);
    v.iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect()
}

#[test]
fn create_write_read_across_blocks_and_a_commit() {
    let (_d, fs) = fresh();
    let (f, fh) = fs.create(ROOT_CTX, ROOT, b"a", 0o644).unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(fs.write(f.ino, 100, &data).unwrap(), 20_000);
    assert_eq!(fs.getattr(f.ino).unwrap().size, 20_100);
    let back = fs.read(f.ino, 0, 30_000).unwrap();
    assert_eq!(back.len(), 20_100);
    assert!(back[..100].iter().all(|&b| b == 0));
    assert_eq!(&back[100..], &data[..]);
    fs.commit("test").unwrap();
    assert_eq!(fs.read(f.ino, 100, 20_000).unwrap(), data);
    // Overwrite a middle range after the commit.
    fs.write(f.ino, 5000, b"hello").unwrap();
    let mut want = data[4898..4907].to_vec();
    want[2..7].copy_from_slice(b"hello");
    assert_eq!(fs.read(f.ino, 4998, 9).unwrap(), want);
    fs.release(f.ino).unwrap();
    assert!(fh > 0);
}

#[test]
fn everything_survives_a_remount() {
    let dir = tempfile::tempdir().unwrap();
    let (file, sub, link);
    {
        let fs = Fs::mount(dir.path(), opts()).unwrap();
        sub = fs.mkdir(ROOT_CTX, ROOT, b"sub", 0o755).unwrap();
        let (f, _) = fs.create(ROOT_CTX, sub.ino, b"f", 0o600).unwrap();
        file = f.ino;
        fs.write(file, 0, &vec![7u8; 100_000]).unwrap();
        fs.release(file).unwrap();
        link = fs.symlink(ROOT_CTX, ROOT, b"ln", b"sub/f").unwrap();
        fs.setxattr(file, b"user.k", b"v", false, false).unwrap();
        fs.shutdown().unwrap();
    }
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    assert_eq!(fs.lookup(ROOT, b"sub").unwrap().ino, sub.ino);
    let f = fs.lookup(sub.ino, b"f").unwrap();
    assert_eq!(f.ino, file);
    assert_eq!(f.size, 100_000);
    assert_eq!(f.perm, 0o600);
    assert_eq!(fs.read(file, 0, 200_000).unwrap(), vec![7u8; 100_000]);
    assert_eq!(fs.readlink(link.ino).unwrap(), b"sub/f");
    assert_eq!(fs.getxattr(file, b"user.k").unwrap(), b"v");
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
}

#[test]
fn errors_are_the_posix_ones() {
    let (_d, fs) = fresh();
    let d = fs.mkdir(ROOT_CTX, ROOT, b"d", 0o755).unwrap();
    assert_eq!(errno(fs.mkdir(ROOT_CTX, ROOT, b"d", 0o755)), libc::EEXIST);
    assert_eq!(errno(fs.lookup(ROOT, b"nope")), libc::ENOENT);
    assert_eq!(errno(fs.lookup(ROOT, &[b'x'; 256])), libc::ENAMETOOLONG);
    let (f, _) = fs.create(ROOT_CTX, d.ino, b"f", 0o644).unwrap();
    assert_eq!(errno(fs.rmdir(ROOT, b"d")), libc::ENOTEMPTY);
    assert_eq!(errno(fs.unlink(ROOT, b"d")), libc::EISDIR);
    assert_eq!(errno(fs.rmdir(d.ino, b"f")), libc::ENOTDIR);
    assert_eq!(errno(fs.lookup(f.ino, b"x")), libc::ENOTDIR);
    assert_eq!(errno(fs.link(d.ino, ROOT, b"dl")), libc::EPERM);
    assert_eq!(
        errno(fs.rename(ROOT, b"d", d.ino, b"inside", RenameMode::Replace)),
        libc::EINVAL
    );
    assert_eq!(errno(fs.readlink(f.ino)), libc::EINVAL);
    assert_eq!(errno(fs.getxattr(f.ino, b"user.none")), libc::ENODATA);
    assert_eq!(errno(fs.removexattr(f.ino, b"user.none")), libc::ENODATA);
}

#[test]
fn rename_replaces_exchanges_and_keeps_link_counts() {
    let (_d, fs) = fresh();
    let a = fs.mkdir(ROOT_CTX, ROOT, b"a", 0o755).unwrap();
    let b = fs.mkdir(ROOT_CTX, ROOT, b"b", 0o755).unwrap();
    let sub = fs.mkdir(ROOT_CTX, a.ino, b"sub", 0o755).unwrap();
    fs.rename(a.ino, b"sub", b.ino, b"sub2", RenameMode::Replace)
        .unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, b.ino);
    let (x, _) = fs.create(ROOT_CTX, a.ino, b"x", 0o644).unwrap();
    let (y, _) = fs.create(ROOT_CTX, b.ino, b"y", 0o644).unwrap();
    assert_eq!(
        errno(fs.rename(a.ino, b"x", b.ino, b"y", RenameMode::NoReplace)),
        libc::EEXIST
    );
    fs.rename(a.ino, b"x", b.ino, b"y", RenameMode::Exchange)
        .unwrap();
    assert_eq!(fs.lookup(a.ino, b"x").unwrap().ino, y.ino);
    assert_eq!(fs.lookup(b.ino, b"y").unwrap().ino, x.ino);
    // Replacing a file drops the replaced inode (no handle holds it after release).
    fs.release(x.ino).unwrap();
    fs.release(y.ino).unwrap();
    fs.rename(a.ino, b"x", b.ino, b"y", RenameMode::Replace)
        .unwrap();
    assert_eq!(errno(fs.getattr(x.ino)), libc::ENOENT);
    assert_eq!(names(&fs, a.ino), Vec::<String>::new());
    assert_eq!(names(&fs, b.ino), vec!["sub2", "y"]);
    // Exchanging a directory with a file across parents moves the ".." link.
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 4);
    fs.rename(b.ino, b"sub2", ROOT, b"f", RenameMode::Exchange)
        .unwrap();
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 5);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 2);
    assert_eq!(fs.lookup(b.ino, b"sub2").unwrap().ino, f.ino);
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, ROOT);
    fs.commit("t").unwrap();
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 5);
}

#[test]
fn hard_links_and_open_unlinked_files() {
    let (_d, fs) = fresh();
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, b"data").unwrap();
    fs.link(f.ino, ROOT, b"g").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
    fs.unlink(ROOT, b"f").unwrap();
    fs.unlink(ROOT, b"g").unwrap();
    // Still open: readable and writable.
    assert_eq!(fs.read(f.ino, 0, 10).unwrap(), b"data");
    fs.write(f.ino, 4, b"more").unwrap();
    fs.commit("t").unwrap();
    assert_eq!(fs.read(f.ino, 0, 10).unwrap(), b"datamore");
    fs.release(f.ino).unwrap();
    assert_eq!(errno(fs.getattr(f.ino)), libc::ENOENT);
    fs.commit("t").unwrap();
    assert_eq!(errno(fs.getattr(f.ino)), libc::ENOENT);
}

#[test]
fn orphans_left_by_a_crash_are_deleted_at_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    let ino;
    {
        let fs = Fs::mount(dir.path(), opts()).unwrap();
        let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
        ino = f.ino;
        fs.write(ino, 0, &vec![1u8; 50_000]).unwrap();
        fs.unlink(ROOT, b"f").unwrap();
        // Committed while still open; then the "crash": no release.
        fs.commit("t").unwrap();
    }
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    fs.commit("t").unwrap();
    assert_eq!(errno(fs.getattr(ino)), libc::ENOENT);
    let snap = fs.store().latest().unwrap();
    let start = block_prefix(ino);
    assert_eq!(
        snap.range(&start[..]..&prefix_end(&start)[..])
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn truncate_cuts_and_zero_extends() {
    let (_d, fs) = fresh();
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, &vec![9u8; 10_000]).unwrap();
    fs.commit("t").unwrap();
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(5000),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(12_000),
            ..Default::default()
        },
    )
    .unwrap();
    let back = fs.read(f.ino, 0, 20_000).unwrap();
    assert_eq!(back.len(), 12_000);
    assert!(back[..5000].iter().all(|&b| b == 9));
    assert!(
        back[5000..].iter().all(|&b| b == 0),
        "bytes past a cut read as zeros"
    );
    fs.commit("t").unwrap();
    assert_eq!(fs.read(f.ino, 0, 20_000).unwrap(), back);
}

#[test]
fn holes_punch_and_seek() {
    let (_d, fs) = fresh();
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 40_960, b"x").unwrap();
    assert_eq!(fs.lseek(f.ino, 0, libc::SEEK_DATA).unwrap(), 40_960);
    assert_eq!(fs.lseek(f.ino, 0, libc::SEEK_HOLE).unwrap(), 0);
    fs.write(f.ino, 0, &vec![1u8; 12_288]).unwrap();
    fs.fallocate(
        f.ino,
        4096,
        4096,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    let back = fs.read(f.ino, 0, 12_288).unwrap();
    assert!(back[4096..8192].iter().all(|&b| b == 0));
    assert!(back[..4096].iter().all(|&b| b == 1));
    assert_eq!(fs.lseek(f.ino, 0, libc::SEEK_HOLE).unwrap(), 4096);
    assert_eq!(
        errno(fs.lseek(f.ino, 1 << 20, libc::SEEK_DATA)),
        libc::ENXIO
    );
    fs.fallocate(f.ino, 0, 100_000, 0).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 100_000);
}

#[test]
fn many_files_in_one_directory_list_in_order_across_commits() {
    let (_d, fs) = fresh();
    for i in 0..500 {
        let (f, _) = fs
            .create(ROOT_CTX, ROOT, format!("f{i:04}").as_bytes(), 0o644)
            .unwrap();
        fs.release(f.ino).unwrap();
        if i % 100 == 0 {
            fs.commit("t").unwrap();
        }
    }
    for i in (0..500).step_by(2) {
        fs.unlink(ROOT, format!("f{i:04}").as_bytes()).unwrap();
    }
    let n = names(&fs, ROOT);
    assert_eq!(n.len(), 250);
    assert_eq!(n[0], "f0001");
    fs.commit("t").unwrap();
    assert_eq!(names(&fs, ROOT), n);
}

#[test]
fn old_versions_read_back_through_the_history_directory() {
    let (_d, fs) = fresh();
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, &vec![1u8; 70_000]).unwrap();
    fs.commit("v1").unwrap();
    let v1 = fs.store().latest_version().unwrap();
    fs.write(f.ino, 0, b"changed").unwrap();
    fs.rename(ROOT, b"f", ROOT, b"g", RenameMode::Replace)
        .unwrap();
    fs.commit("v2").unwrap();
    let v2 = fs.store().latest_version().unwrap();
    fs.unlink(ROOT, b"g").unwrap();
    fs.commit("v3").unwrap();

    let h = fs.lookup(ROOT, b".zippy").unwrap();
    assert_eq!(h.ino, HISTORY_DIR);
    assert!(
        !names(&fs, ROOT).contains(&".zippy".to_string()),
        "hidden from the root's listing"
    );
    let versions = fs.lookup(h.ino, b"versions").unwrap();
    let at = |v: u64| fs.lookup(versions.ino, v.to_string().as_bytes()).unwrap();
    let f1 = fs.lookup(at(v1).ino, b"f").unwrap();
    assert_eq!(f1.size, 70_000);
    assert_eq!(fs.read(f1.ino, 0, 100_000).unwrap(), vec![1u8; 70_000]);
    assert_eq!(errno(fs.lookup(at(v1).ino, b"g")), libc::ENOENT);
    let g2 = fs.lookup(at(v2).ino, b"g").unwrap();
    let mut want = vec![1u8; 70_000];
    want[..7].copy_from_slice(b"changed");
    assert_eq!(fs.read(g2.ino, 0, 100_000).unwrap(), want);
    assert_eq!(names(&fs, at(v2).ino), vec!["g"]);
    assert_eq!(names(&fs, ROOT), Vec::<String>::new());
    // Read-only, and the name cannot be taken or removed.
    assert_eq!(errno(fs.write(g2.ino, 0, b"x")), libc::EROFS);
    assert_eq!(errno(fs.open(g2.ino, true)), libc::EROFS);
    assert!(fs.open(g2.ino, false).is_ok());
    assert_eq!(
        errno(fs.mkdir(ROOT_CTX, at(v2).ino, b"new", 0o755)),
        libc::EROFS
    );
    assert_eq!(errno(fs.unlink(at(v2).ino, b"g")), libc::EROFS);
    assert_eq!(
        errno(fs.mkdir(ROOT_CTX, ROOT, b".zippy", 0o755)),
        libc::EEXIST
    );
    assert_eq!(errno(fs.rmdir(ROOT, b".zippy")), libc::EROFS);
    assert_eq!(
        errno(fs.rename(ROOT, b".zippy", ROOT, b"x", RenameMode::Replace)),
        libc::EROFS
    );
    assert_eq!(errno(fs.lookup(versions.ino, b"999999")), libc::ENOENT);
}

#[test]
fn patching_a_block_zero_fills_the_gap_and_never_holds_more_than_a_block() {
    let bs = 64;
    let mut b = Vec::new();
    // Into a hole, past its end: the gap reads as zeros.
    patch_block(&mut b, 10, &[1; 4], bs);
    assert_eq!(b.len(), 14);
    assert!(b[..10].iter().all(|&x| x == 0));
    assert_eq!(&b[10..], &[1; 4]);
    // Straddling the end: the old part is overwritten, the rest appended.
    patch_block(&mut b, 12, &[2; 6], bs);
    assert_eq!(b.len(), 18);
    assert_eq!(&b[10..12], &[1; 2]);
    assert_eq!(&b[12..], &[2; 6]);
    // Inside: nothing grows, and the bytes around stay.
    let before = b.clone();
    patch_block(&mut b, 0, &[3; 2], bs);
    assert_eq!(b.len(), 18);
    assert_eq!(&b[..2], &[3; 2]);
    assert_eq!(&b[2..], &before[2..]);
    // Past the end of existing bytes: the gap between reads as zeros.
    patch_block(&mut b, 20, &[5; 2], bs);
    assert_eq!(&b[18..], &[0, 0, 5, 5]);
    // Appends one byte at a time up to the block's end: doubling would
    // have reached 112 bytes of capacity; the block's size caps it.
    for at in 22..bs {
        patch_block(&mut b, at, &[4], bs);
    }
    assert_eq!(b.len(), bs);
    assert!(b.capacity() <= bs, "capacity {}", b.capacity());
}

#[test]
fn a_damaged_filesystem_record_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    drop(Fs::mount(dir.path(), opts()).unwrap());
    let good = {
        let store = Store::open(dir.path(), opts().store).unwrap();
        let snap = store.latest().unwrap();
        snap.get(META_KEY).unwrap().unwrap().to_vec()
    };
    let with_block_size = |bs: u32| {
        let mut m = good.clone();
        m[8..12].copy_from_slice(&bs.to_le_bytes());
        m
    };
    let with_next = |n: u64| {
        let mut m = good.clone();
        m[0..8].copy_from_slice(&n.to_le_bytes());
        m
    };
    let cases: [(Vec<u8>, &str); 5] = [
        (with_block_size(0), "block size 0"),
        (with_block_size(3000), "block size 3000"),
        (with_block_size(1 << 21), "block size 2097152"),
        (with_next(0), "next inode number 0"),
        (good[..20].to_vec(), "20 bytes"),
    ];
    for (meta, want) in cases {
        let store = Store::open(dir.path(), opts().store).unwrap();
        let mut t = store.begin_write().unwrap();
        t.put(META_KEY, &meta).unwrap();
        t.commit("damage").unwrap();
        match Fs::with_store(store, opts()) {
            Ok(_) => panic!("a record with {want} was accepted"),
            Err(e) => {
                assert_eq!(e.errno(), libc::EIO);
                assert!(e.to_string().contains(want), "{e} should say {want}");
            }
        }
    }
}

#[test]
fn an_inode_the_kernel_still_holds_outlives_its_last_name_until_it_is_forgotten() {
    let (_d, fs) = fresh();
    let dir = fs.mkdir(ROOT_CTX, ROOT, b"d", 0o755).unwrap();
    fs.remember(dir.ino);
    let (f, _fh) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.remember(f.ino);
    fs.write(f.ino, 0, b"data").unwrap();
    fs.release(f.ino).unwrap();
    fs.unlink(ROOT, b"f").unwrap();
    fs.rmdir(ROOT, b"d").unwrap();
    for _ in 0..2 {
        assert_eq!(fs.getattr(dir.ino).unwrap().nlink, 0);
        assert_eq!(fs.getattr(f.ino).unwrap().nlink, 0);
        assert_eq!(fs.read(f.ino, 0, 10).unwrap(), b"data");
        assert!(names(&fs, ROOT).is_empty());
        // Across a commit too: the store holds them as orphans.
        fs.commit("test").unwrap();
    }
    // Creating in a removed directory fails as on ext4.
    assert_eq!(
        errno(fs.create(ROOT_CTX, dir.ino, b"x", 0o644)),
        libc::ENOENT
    );
    fs.forget(dir.ino, 1).unwrap();
    fs.forget(f.ino, 1).unwrap();
    assert_eq!(errno(fs.getattr(dir.ino)), libc::ENOENT);
    assert_eq!(errno(fs.getattr(f.ino)), libc::ENOENT);
    fs.commit("test").unwrap();
    assert_eq!(errno(fs.getattr(f.ino)), libc::ENOENT);
    // Forgetting more than was remembered, or what was never remembered,
    // is harmless.
    fs.forget(f.ino, 5).unwrap();
    fs.forget(12345, 1).unwrap();
}

#[test]
fn a_write_of_nothing_past_the_end_changes_nothing() {
    // Found by the model test: the size grew to the offset.
    let (_d, fs) = fresh();
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, b"x").unwrap();
    let before = fs.getattr(f.ino).unwrap();
    assert_eq!(fs.write(f.ino, 100, b"").unwrap(), 0);
    let after = fs.getattr(f.ino).unwrap();
    assert_eq!((after.size, after.mtime), (1, before.mtime));
}
