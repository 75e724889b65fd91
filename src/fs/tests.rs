//! Unit tests of the filesystem core, without a mount.

use super::*;
use data::patch_block;

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
fn a_failed_commit_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A store on a device of 4 MiB: the commit of 8 MiB of data fails.
    let dev = std::sync::Arc::new(crate::store::SimBackend::new(4 << 20).unwrap());
    let store = Store::open_backend(
        Box::new(dev),
        StoreOptions {
            map_size: 4 << 20,
            reserve: 1 << 20,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let fs = Fs::with_store(store, opts()).unwrap();
    let _ = dir;
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"big", 0o644).unwrap();
    // 8 MiB in 1 MiB writes (the cache limit): the commit a full cache
    // forces fails at some point, and that write fails without effect.
    let mut written = 0u64;
    let mut failure = None;
    for i in 0..8u64 {
        match fs.write(f.ino, i << 20, &vec![3u8; 1 << 20]) {
            Ok(_) => written += 1 << 20,
            Err(e) => {
                failure = Some(e.errno());
                break;
            }
        }
    }
    let r = match failure {
        Some(e) => Err(FsError::Errno(e)),
        None => fs.commit("t"),
    };
    assert_eq!(errno(r), libc::ENOSPC);
    // Every accepted write is still there, in memory.
    assert_eq!(fs.getattr(f.ino).unwrap().size, written);
    assert_eq!(fs.read(f.ino, 0, 16).unwrap(), vec![3u8; 16]);
    // Making room (a smaller file) lets the next commit through.
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    fs.commit("t").unwrap();
    assert_eq!(fs.read(f.ino, 0, 2000).unwrap(), vec![3u8; 1000]);
}

#[test]
fn a_commit_hands_every_block_but_each_jobs_last_to_the_disk_early() {
    let dev = std::sync::Arc::new(crate::store::SimBackend::new(64 << 20).unwrap());
    let store = Store::open_backend(
        Box::new(dev.clone()),
        StoreOptions {
            map_size: 64 << 20,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // 8 KiB blocks, so extents are told from 4 KiB node pages; one shard,
    // so one I/O thread and every commit one job.
    const BS: u64 = 8192;
    let fs = Fs::with_store(
        store,
        FsOptions {
            shards: 1,
            block_size: BS as u32,
            ..opts()
        },
    )
    .unwrap();
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.commit("create").unwrap();
    dev.take_writeback_hints();
    // The extents (whole blocks) the last commit wrote, in file order.
    let synced_extents = || {
        let mut e: Vec<(u64, u64)> = dev
            .last_synced_writes()
            .into_iter()
            .filter(|&(_, len)| len == BS)
            .collect();
        e.sort_unstable();
        e
    };
    // Three whole blocks: the first two go to the disk early, in one
    // request since their extents adjoin; the last waits for the commit's
    // sync with the nodes.
    fs.write(f.ino, 0, &[7u8; 3 * BS as usize]).unwrap();
    fs.commit("three blocks").unwrap();
    let extents = synced_extents();
    assert_eq!(extents.len(), 3, "the commit wrote {extents:?}");
    assert!(
        extents.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0),
        "one job's extents adjoin: {extents:?}"
    );
    let hints = dev.take_writeback_hints();
    assert_eq!(hints, vec![(extents[0].0, 2 * BS)], "extents {extents:?}");
    // A long run goes out a megabyte at a time, all but its last block
    // (the design's figure, written here rather than read from the code's
    // constant, so a change to the constant shows up as a failure).
    const MEGABYTE: u64 = 1 << 20;
    let n = 300u64;
    fs.write(f.ino, 0, &vec![8u8; (n * BS) as usize]).unwrap();
    fs.commit("a long run").unwrap();
    let hints = dev.take_writeback_hints();
    let hinted: u64 = hints.iter().map(|h| h.1).sum();
    assert_eq!(hinted, (n - 1) * BS, "{hints:?}");
    assert!(hints.iter().all(|h| h.1 <= MEGABYTE), "{hints:?}");
    // Each place the extents do not adjoin may cost one more request.
    let extents = synced_extents();
    assert_eq!(extents.len() as u64, n);
    let breaks = extents
        .windows(2)
        .filter(|w| w[0].0 + w[0].1 != w[1].0)
        .count() as u64;
    assert!(
        hints.len() as u64 <= ((n - 1) * BS).div_ceil(MEGABYTE) + breaks,
        "{} hints for {breaks} breaks: {hints:?}",
        hints.len()
    );
    // One block (what an fsync after a small write commits): no hint.
    fs.write(f.ino, 100, b"x").unwrap();
    fs.commit("one block").unwrap();
    assert_eq!(dev.take_writeback_hints(), Vec::new());
    assert_eq!(fs.read(f.ino, 0, 3 * BS as u32).unwrap()[..100], [8u8; 100]);
}

#[test]
fn fsync_commits_and_a_second_fsync_has_nothing_to_wait_for() {
    let (_d, fs) = fresh();
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, b"x").unwrap();
    let before = fs.store().latest_version();
    fs.fsync().unwrap();
    let after = fs.store().latest_version();
    assert!(after > before, "fsync made no version");
    fs.fsync().unwrap();
    assert_eq!(fs.store().latest_version(), after, "nothing new: no commit");
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
fn sizes_past_the_largest_offset_are_efbig_for_write_truncate_and_fallocate() {
    let (_d, fs) = fresh();
    let (f, _fh) = fs.create(ROOT_CTX, ROOT, b"big", 0o644).unwrap();
    let max = i64::MAX as u64;
    let size = |s| SetAttr {
        size: Some(s),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(f.ino, size(max + 1))), libc::EFBIG);
    assert_eq!(errno(fs.fallocate(f.ino, max, 1, 0)), libc::EFBIG);
    assert_eq!(errno(fs.fallocate(f.ino, 1, max, 0)), libc::EFBIG);
    assert_eq!(errno(fs.write(f.ino, max, b"x")), libc::EFBIG);
    // Up to the limit itself is a size like any other.
    assert_eq!(fs.setattr(f.ino, size(max)).unwrap().size, max);
    assert_eq!(fs.getattr(f.ino).unwrap().size, max);
}

#[test]
fn a_panic_at_any_step_of_a_commit_stops_every_later_change_and_the_store_reopens_at_the_last_good_commit()
 {
    for step in [
        "cut",
        "edit",
        "blocks",
        "blocks on an I/O thread",
        "store commit",
        "after commit",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fs = Fs::mount(dir.path(), opts()).unwrap();
        let (a, _) = fs.create(ROOT_CTX, ROOT, b"a", 0o644).unwrap();
        fs.write(a.ino, 0, &[1u8; 5000]).unwrap();
        fs.fsync().unwrap();
        let good = fs.store().latest_version();
        // More than a megabyte, so the blocks go to the I/O threads.
        let big = vec![2u8; 2 << 20];
        let (b, _) = fs.create(ROOT_CTX, ROOT, b"b", 0o644).unwrap();
        fs.write(b.ino, 0, &big).unwrap();
        fs.panic_at(Some(step));
        assert_eq!(errno(fs.fsync()), libc::EIO, "{step}");
        fs.panic_at(None);
        let why = fs.failure().unwrap_or_else(|| panic!("{step}: not failed"));
        assert!(why.contains("panic"), "{step}: {why}");
        // Nothing is claimed durable any more, and nothing changes.
        assert_eq!(errno(fs.fsync()), libc::EIO, "{step}");
        assert_eq!(errno(fs.commit("test")), libc::EIO, "{step}");
        assert_eq!(errno(fs.write(a.ino, 0, b"z")), libc::EIO, "{step}");
        assert_eq!(errno(fs.create(ROOT_CTX, ROOT, b"c", 0o644)), libc::EIO);
        assert_eq!(errno(fs.mkdir(ROOT_CTX, ROOT, b"d", 0o755)), libc::EIO);
        assert_eq!(errno(fs.unlink(ROOT, b"a")), libc::EIO);
        assert_eq!(
            errno(fs.rename(ROOT, b"a", ROOT, b"e", RenameMode::Replace)),
            libc::EIO
        );
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(errno(fs.setattr(a.ino, truncate)), libc::EIO);
        assert_eq!(
            errno(fs.setxattr(a.ino, b"user.x", b"1", false, false)),
            libc::EIO
        );
        // Reads go on.
        assert_eq!(
            fs.read(a.ino, 0, 10_000).unwrap(),
            vec![1u8; 5000],
            "{step}"
        );
        assert_eq!(fs.lookup(ROOT, b"a").unwrap().ino, a.ino);
        let (unsaved, _, _) = fs.unsaved();
        assert!(
            step == "after commit" || unsaved > 0,
            "{step}: unsaved {unsaved}"
        );
        drop(fs);

        // A remount opens at the last commit that completed.
        let fs = Fs::mount(dir.path(), opts()).unwrap();
        assert!(fs.failure().is_none());
        assert_eq!(
            fs.read(a.ino, 0, 10_000).unwrap(),
            vec![1u8; 5000],
            "{step}"
        );
        match fs.lookup(ROOT, b"b") {
            Ok(i) => {
                assert_eq!(
                    step, "after commit",
                    "a commit that panicked became durable"
                );
                assert_eq!(fs.read(i.ino, 0, 3 << 20).unwrap(), big);
            }
            Err(_) => {
                assert_ne!(step, "after commit", "a durable commit was lost");
                assert_eq!(fs.store().latest_version(), good, "{step}");
            }
        }
        let report = fs.store().fsck().unwrap();
        assert!(report.is_clean(), "{step}: {report}");
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
fn fsyncs_arriving_during_a_commit_share_the_next_one() {
    use std::sync::mpsc;
    let (_d, fs) = fresh();
    let fs = Arc::new(fs);
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, b"first").unwrap();
    // Hold the first commit at its store commit until eight more fsyncs
    // are waiting.
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let once = Mutex::new(Some((held_tx, go_rx)));
    fs.on_step(Some(Arc::new(move |step| {
        if step == "store commit"
            && let Some((held, go)) = once.lock().take()
        {
            let _ = held.send(());
            let _ = go.recv();
        }
    })));
    let before = fs.flush.started();
    let first = {
        let fs = Arc::clone(&fs);
        std::thread::spawn(move || fs.fsync())
    };
    held_rx.recv().unwrap();
    let waiting: Vec<_> = (0..8u64)
        .map(|i| {
            let fs = Arc::clone(&fs);
            std::thread::spawn(move || {
                fs.write(f.ino, 100 + i * 10, b"later").unwrap();
                fs.fsync()
            })
        })
        .collect();
    // Every one of them has written and is waiting for a commit (the
    // first fsync is inside `sync` too, holding its commit).
    let started = std::time::Instant::now();
    while fs.flush.in_sync.load(Ordering::Relaxed) < 9 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the fsyncs never queued"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    go_tx.send(()).unwrap();
    first.join().unwrap().unwrap();
    for w in waiting {
        w.join().unwrap().unwrap();
    }
    fs.on_step(None);
    // One commit for the first fsync, one shared by the eight.
    assert_eq!(fs.flush.started(), before + 2);
    let data = fs.read(f.ino, 0, 200).unwrap();
    for i in 0..8 {
        let at = 100 + i * 10;
        assert_eq!(&data[at..at + 5], b"later");
    }
}

#[test]
fn fallocate_promises_the_blocks_that_are_not_full_until_writes_fill_them() {
    let (_d, fs) = fresh();
    let bs = 4096;
    let (f, fh) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, &[1u8; 8192]).unwrap();
    fs.write(f.ino, 8192, &[1u8; 100]).unwrap();
    // Blocks 0 and 1 are full: blocks 2 (partly written) to 9 are promised.
    fs.fallocate(f.ino, 0, 10 * bs, 0).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 10 * bs);
    assert_eq!(fs.promised_bytes(), 8 * bs);
    // Allocating again promises nothing twice.
    fs.fallocate(f.ino, 0, 10 * bs, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(fs.promised_bytes(), 8 * bs);
    // A partly written block stays promised, across a commit too.
    fs.write(f.ino, 3 * bs, &[2u8; 10]).unwrap();
    fs.commit("test").unwrap();
    assert_eq!(fs.promised_bytes(), 8 * bs);
    // Filling blocks 2 to 5 lets them go.
    fs.write(f.ino, 2 * bs, &vec![3u8; 4 * bs as usize])
        .unwrap();
    assert_eq!(fs.promised_bytes(), 4 * bs);
    // Past the end of file (KEEP_SIZE): promised, the size unchanged.
    fs.fallocate(f.ino, 10 * bs, 2 * bs, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(fs.promised_bytes(), 6 * bs);
    assert_eq!(fs.getattr(f.ino).unwrap().size, 10 * bs);
    // A punch lets whole blocks go; a truncate lets go what it cuts off.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fs.fallocate(f.ino, 6 * bs, bs + 1, punch).unwrap();
    assert_eq!(fs.promised_bytes(), 5 * bs);
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(8 * bs),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(fs.promised_bytes(), bs, "block 7 is left");
    // Deleting the file lets the rest go, once it is closed (until then
    // it can still be written).
    fs.unlink(ROOT, b"f").unwrap();
    assert_eq!(fs.promised_bytes(), bs);
    fs.release_handle(f.ino, fh).unwrap();
    assert_eq!(fs.promised_bytes(), 0);
    fs.commit("test").unwrap();
}

#[test]
fn while_space_is_promised_other_writes_that_would_take_it_are_refused() {
    let (_d, fs) = fresh();
    let mib = 1u64 << 20;
    fs.cap_room(8 * mib);
    let (kept, _) = fs.create(ROOT_CTX, ROOT, b"kept", 0o644).unwrap();
    let (other, _) = fs.create(ROOT_CTX, ROOT, b"other", 0o644).unwrap();
    // More than the room: refused, nothing promised, the size unchanged.
    assert_eq!(errno(fs.fallocate(kept.ino, 0, 9 * mib, 0)), libc::ENOSPC);
    assert_eq!(fs.promised_bytes(), 0);
    assert_eq!(fs.getattr(kept.ino).unwrap().size, 0);
    fs.fallocate(kept.ino, 0, 4 * mib, 0).unwrap();
    // Other writes go until they would eat into the promise.
    let chunk = vec![7u8; 256 << 10];
    let mut written = 0;
    let refused = loop {
        match fs.write(other.ino, written, &chunk) {
            Ok(_) => written += chunk.len() as u64,
            Err(e) => break e.errno(),
        }
        assert!(written <= 8 * mib, "never refused");
    };
    assert_eq!(refused, libc::ENOSPC);
    assert!(written >= 2 * mib, "refused too early: {written}");
    assert!(written <= 4 * mib, "took promised room: {written}");
    // The promised file is written in full all the same.
    let data: Vec<u8> = (0..4 * mib).map(|i| (i % 249) as u8).collect();
    fs.write(kept.ino, 0, &data).unwrap();
    assert_eq!(fs.promised_bytes(), 0);
    fs.commit("test").unwrap();
    assert_eq!(fs.read(kept.ino, 0, 4 << 20).unwrap(), data);
    // With nothing promised, writes are no longer checked at write time.
    fs.write(other.ino, written, &chunk).unwrap();
}
