//! Persistence on a real mount: what is there at unmount is there at the next
//! mount; after `kill -9` of the daemon during a write load, every byte that
//! was `fsync`ed is there, and `fsck` of the store is clean. Both daemon modes.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn content(i: u64) -> Vec<u8> {
    (0..(i % 7) * 9000 + 100).map(|j| (j ^ i) as u8).collect()
}

fn unmount_and_mount_again(mode: &[&str]) {
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), mode);
    std::fs::create_dir_all(m.path().join("d/e")).expect("mkdir");
    for i in 0..50u64 {
        std::fs::write(m.path().join(format!("d/f{i}")), content(i)).expect("write");
    }
    std::os::unix::fs::symlink("d/f1", m.path().join("ln")).expect("symlink");
    std::fs::hard_link(m.path().join("d/f2"), m.path().join("d/e/hard")).expect("link");
    std::fs::rename(m.path().join("d/f3"), m.path().join("d/e/moved")).expect("rename");
    assert!(m.unmount().success(), "clean unmount");
    common::fsck_clean(store.path());

    let m = common::Mounted::start(store.path(), mode);
    for i in (0..50u64).filter(|&i| i != 3) {
        assert_eq!(
            std::fs::read(m.path().join(format!("d/f{i}"))).expect("read"),
            content(i)
        );
    }
    assert_eq!(
        std::fs::read(m.path().join("d/e/moved")).expect("moved"),
        content(3)
    );
    assert_eq!(
        std::fs::read_link(m.path().join("ln")).expect("readlink"),
        Path::new("d/f1")
    );
    assert_eq!(
        std::fs::read(m.path().join("d/e/hard")).expect("hard link"),
        content(2)
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(m.path().join("d/f2"))
            .expect("stat")
            .nlink(),
        2
    );
    assert!(m.unmount().success());
}

fn kill9_keeps_every_fsynced_byte(mode: &[&str]) {
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), mode);
    let root = m.path().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    // After the kill the harness detaches the dead mount (`umount -l`), and
    // a writer still running would then write to the directory beneath it;
    // only files on the zippyfs mount (its device) count.
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(&root).expect("stat mount").dev();
    // Writers record which files they fsync'd; unsynced writes may be lost.
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let root = root.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut synced = Vec::new();
                let mut i = w * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let path = root.join(format!("w{i}"));
                    let r = std::fs::File::create(&path).and_then(|mut f| {
                        f.write_all(&content(i))?;
                        if i % 2 == 0 {
                            f.sync_all()?;
                        }
                        if f.metadata()?.dev() != dev {
                            return Err(std::io::Error::other("not on the mount any more"));
                        }
                        Ok(())
                    });
                    match r {
                        Ok(()) if i % 2 == 0 => synced.push(i),
                        Ok(()) => {}
                        Err(_) => break,
                    }
                    i += 1;
                }
                synced
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    m.kill9();
    stop.store(true, Ordering::Relaxed);
    let synced: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(!synced.is_empty(), "the load wrote nothing before the kill");
    common::fsck_clean(store.path());

    let m = common::Mounted::start(store.path(), mode);
    let started = Instant::now();
    for i in &synced {
        let got = std::fs::read(m.path().join(format!("w{i}")))
            .unwrap_or_else(|e| panic!("fsync'd file w{i} is gone after kill -9: {e}"));
        assert_eq!(got, content(*i), "fsync'd file w{i} changed after kill -9");
    }
    println!(
        "{} fsync'd files checked in {:?}",
        synced.len(),
        started.elapsed()
    );
    assert!(m.unmount().success());
    common::fsck_clean(store.path());
}

#[test]
fn unmount_and_mount_again_keeps_everything() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        unmount_and_mount_again(mode);
    }
}

#[test]
fn kill_9_during_a_write_load_keeps_every_fsynced_byte() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        kill9_keeps_every_fsynced_byte(mode);
    }
}
