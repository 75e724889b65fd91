//! Commits: what a failed or panicking commit leaves, group commit, and
//! blocks handed to the disk early.

use super::*;

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
    // Its name is committed; its data will not be.
    fs.commit("t").unwrap();
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
    // Every accepted write is still there, in memory, and what is not
    // saved names the file by its committed name.
    assert_eq!(fs.getattr(f.ino).unwrap().size, written);
    let (_, bytes, names) = fs.unsaved();
    assert!(bytes > 0 && bytes <= written, "{bytes} of {written}");
    assert_eq!(names, vec!["big".to_string()]);
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

/// The hook is told which version a commit made (sync judges "nothing
/// new" by it: the version is visible before the hook runs).
#[test]
fn the_commit_hook_is_told_the_version_and_what_changed() {
    let (_d, fs) = fresh();
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s = seen.clone();
    fs.on_commit(Box::new(move |c| {
        s.lock().push((c.version, c.inodes.clone()))
    }));
    let (f, _) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, b"x").unwrap();
    fs.commit("t").unwrap();
    let v1 = fs.store().latest_version().unwrap();
    fs.write(f.ino, 0, b"y").unwrap();
    fs.commit("t").unwrap();
    let v2 = fs.store().latest_version().unwrap();
    let seen = seen.lock();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![v1, v2]);
    assert!(seen[1].1.contains(&f.ino), "{seen:?}");
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

/// The commit hook says which blocks of each file a commit changed
/// (`Changed::data`), so that sync reads those alone: written blocks, a
/// cut, nothing for a change of attributes only, and no entry for a file
/// that went.
#[test]
fn the_commit_hook_names_the_blocks_each_commit_changed() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    type Seen = Vec<(Vec<u64>, HashMap<u64, BlocksChanged>)>;
    let seen: Arc<parking_lot::Mutex<Seen>> = Arc::default();
    let s = seen.clone();
    fs.on_commit(Box::new(move |c| {
        s.lock().push((c.inodes.clone(), c.data.clone()))
    }));
    let f = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap().0.ino;
    fs.write(f, 0, &[1u8; 4096]).unwrap();
    fs.write(f, 5 * 4096, &[2u8; 10]).unwrap();
    fs.commit("write").unwrap();
    fs.setattr(
        f,
        SetAttr {
            size: Some(2 * 4096),
            ..Default::default()
        },
    )
    .unwrap();
    fs.write(f, 3 * 4096, &[3u8; 4096]).unwrap();
    fs.commit("cut").unwrap();
    fs.setattr(
        f,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    fs.commit("chmod").unwrap();
    fs.release(f).unwrap();
    fs.unlink(ROOT, b"f").unwrap();
    fs.commit("unlink").unwrap();
    let seen = seen.lock();
    let data: Vec<Option<BlocksChanged>> = seen
        .iter()
        .map(|(_, d)| {
            d.get(&f).map(|b| {
                let mut b = b.clone();
                b.blocks.sort_unstable();
                b
            })
        })
        .collect();
    let part = |cut, blocks: &[u64]| {
        Some(BlocksChanged {
            cut,
            blocks: blocks.to_vec(),
        })
    };
    assert_eq!(
        data,
        [
            part(None, &[0, 5]),
            part(Some(2), &[3]),
            part(None, &[]),
            None
        ]
    );
    assert!(seen.iter().all(|(inodes, _)| inodes.contains(&f)));
}

/// Every version the mount makes reaches the commit hook, those that
/// change no file too (gc, retention, the block index): sync reads at
/// the last version it was told of, and one never told of would leave
/// it behind the newest for good.
#[test]
fn every_version_a_mount_makes_is_told_to_the_commit_hook() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::mount(dir.path(), opts()).unwrap();
    let told: Arc<parking_lot::Mutex<Vec<u64>>> = Arc::default();
    let t = told.clone();
    fs.on_commit(Box::new(move |c| t.lock().push(c.version)));
    let f = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap().0.ino;
    fs.write(f, 0, &[1u8; 4096]).unwrap();
    fs.release(f).unwrap();
    fs.commit("write").unwrap();
    fs.gc().unwrap();
    assert_eq!(
        told.lock().last().copied(),
        fs.store().latest_version(),
        "gc"
    );
    fs.set_retention(crate::store::Retention::default())
        .unwrap();
    assert_eq!(
        told.lock().last().copied(),
        fs.store().latest_version(),
        "retention"
    );
    fs.keep_block_index().unwrap();
    assert_eq!(
        told.lock().last().copied(),
        fs.store().latest_version(),
        "index"
    );
}
