//! Failures that must be loud: a daemon that could not save what it held
//! says so and exits non-zero.

mod common;

use common::SmallDisk;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_final_commit_that_fails_exits_nonzero_and_names_what_was_not_saved() {
    if !common::fuse_or_skip() {
        return;
    }
    let disk = SmallDisk::new("24m");
    let store = disk.path().join("store");
    let mnt = tempfile::tempdir().expect("mountpoint");
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut child = Command::new(common::bin())
        .args([
            "mount",
            "-f",
            "-o",
            "flush_interval=3600",
            "--cache-size",
            "1G",
        ])
        .arg(mnt.path())
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("spawn zippyfs");
    let started = Instant::now();
    while !common::is_mounted(mnt.path()) {
        assert!(child.try_wait().expect("wait").is_none(), "daemon exited");
        assert!(started.elapsed() < Duration::from_secs(20), "no mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = mnt.path();
    std::fs::write(m.join("kept"), b"committed before the disk filled").expect("write");
    common::fsync_root(m);
    // Data that only the daemon's memory holds: the file stays open (a
    // close would ask for a commit) while the disk fills up under it.
    let mut open = std::fs::File::create(m.join("lost.bin")).expect("create");
    open.write_all(&vec![7u8; 12 << 20]).expect("write");
    let filler = disk.fill();
    drop(open);
    let st = Command::new("umount").arg(m).status().expect("umount");
    assert!(st.success(), "umount");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the daemon did not exit after umount");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(log.path()).expect("read log");
    assert!(
        !status.success(),
        "exit status {status} after losing data:\n{text}"
    );
    assert!(
        text.contains("NOT SAVED") && text.contains("lost.bin") && text.contains("no space"),
        "the message must say what was not saved and why:\n{text}"
    );

    // What was committed survives; the store is whole.
    std::fs::remove_file(filler).expect("free the disk");
    common::fsck_clean(&store);
    let again = common::Mounted::start(&store, &[]);
    assert_eq!(
        std::fs::read(again.path().join("kept")).expect("kept"),
        b"committed before the disk filled"
    );
    // A commit may have taken the file with the part of its data the
    // kernel had written back by then, in room that versions let go of
    // (under load it does): what is there is what was written, or holes
    // not yet written; the rest is what the message named as not saved.
    if let Ok(part) = std::fs::read(again.path().join("lost.bin")) {
        assert!(part.len() <= 12 << 20, "{} bytes", part.len());
        assert!(
            part.iter().all(|&b| b == 7 || b == 0),
            "lost.bin holds bytes never written"
        );
    }
    assert!(again.unmount().success());
}

/// A small ext4 of our own on a loop device, unmounted when dropped.
struct LoopExt4 {
    mnt: tempfile::TempDir,
}

impl LoopExt4 {
    fn new(size: &str) -> LoopExt4 {
        let mnt = tempfile::tempdir().expect("ext4 mountpoint");
        let image = mnt.path().with_extension("img");
        let run = |cmd: &mut Command| cmd.status().is_ok_and(|s| s.success());
        let ok = run(Command::new("truncate").args(["-s", size]).arg(&image))
            && run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image))
            && run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(mnt.path()));
        let _ = std::fs::remove_file(&image);
        assert!(ok, "a {size} loop-mounted ext4 (needs root and e2fsprogs)");
        LoopExt4 { mnt }
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt.path()).status();
    }
}

fn zippyfs(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(common::bin())
        .args(args)
        .output()
        .expect("run zippyfs")
}

/// Writes `name` (`len` bytes of `seed`) and fsyncs it; the fsync's error.
fn write_synced(dir: &Path, name: &str, len: usize, seed: u8) -> std::io::Result<()> {
    let mut f = std::fs::File::create(dir.join(name))?;
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    f.write_all(&data)?;
    f.sync_all()
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn a_full_disk_is_left_by_deleting_alone_old_versions_giving_way_to_new_data() {
    if !common::fuse_or_skip() {
        return;
    }
    const FILE: usize = 4 << 20;
    let disk = LoopExt4::new("160M");
    let store = disk.path().join("store");
    // Keep everything, so that only the disk's size limits the history.
    std::fs::create_dir(&store).expect("store dir");
    std::fs::write(
        store.join("retention.conf"),
        "keep_last = 1000000\nhourly = 0\ndaily = 0\n",
    )
    .expect("policy");
    let m = common::Mounted::start(&store, &[]);
    let root = m.path().to_path_buf();

    // Fill it: a few files rewritten (old versions to let go), then new
    // files, each fsync'd, until the disk is full. Every fsync that
    // returned must survive.
    let mut synced: Vec<(String, u8)> = Vec::new();
    let mut full = None;
    for i in 0..200u32 {
        let name = if i < 24 {
            format!("f{}", i % 4)
        } else {
            format!("f{i}")
        };
        let seed = i as u8;
        match write_synced(&root, &name, FILE, seed) {
            Ok(()) => {
                synced.retain(|(n, _)| *n != name);
                synced.push((name, seed));
            }
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let full = full.expect("the disk never filled");
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    for (name, seed) in &synced {
        assert!(
            std::fs::read(root.join(name)).expect("read") == content(FILE, *seed),
            "{name} changed"
        );
    }
    let versions_before = common::version_ids(&root).len();

    // Deleting every file commits, on the full disk.
    for e in std::fs::read_dir(&root).expect("list") {
        let p = e.expect("entry").path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('f'))
        {
            std::fs::remove_file(p).expect("rm");
        }
    }
    common::fsync_root(&root);

    // A new policy and a gc, on the full disk, answered at once.
    let started = Instant::now();
    let st = store.as_os_str();
    let o = zippyfs(&[
        "retention".as_ref(),
        st,
        "--keep-last".as_ref(),
        "50".as_ref(),
    ]);
    assert!(
        o.status.success(),
        "retention: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = zippyfs(&["gc".as_ref(), root.as_os_str()]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retention and gc took {:?}",
        started.elapsed()
    );
    assert!(
        o.status.success() || !String::from_utf8_lossy(&o.stderr).contains("did not answer"),
        "gc: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // And new data fits again: the old versions give way to it.
    for i in 0..8u32 {
        write_synced(&root, &format!("g{i}"), FILE, 100 + i as u8)
            .unwrap_or_else(|e| panic!("g{i} after deleting everything: {e}"));
    }
    for i in 0..8u32 {
        assert!(
            std::fs::read(root.join(format!("g{i}"))).expect("g") == content(FILE, 100 + i as u8)
        );
    }
    let after = common::run_json(&["versions".as_ref(), root.as_os_str()], &root);
    let causes: Vec<&str> = after
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["cause"].as_str())
        .collect();
    assert!(
        causes
            .iter()
            .any(|c| c.starts_with("disk full: versions up to")),
        "the versions list does not say that versions were let go: {causes:?}"
    );
    assert!(
        after.as_array().expect("array").len() <= versions_before.max(50),
        "{versions_before} versions before, {causes:?} after"
    );
    assert!(m.unmount().success());
    common::fsck_clean(&store);
}

/// `fallocate` of `len` bytes at 0 of a new file in `dir`: the errno, or 0.
fn fallocate_new(dir: &Path, name: &str, len: i64) -> i32 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(dir.join(name)).expect("create");
    // SAFETY: a plain system call on a descriptor we own.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

#[test]
fn fallocate_past_what_the_disk_holds_fails_at_once_as_on_ext4() {
    if !common::fuse_or_skip() {
        return;
    }
    let disk = LoopExt4::new("128M");
    let store = disk.path().join("store");
    let m = common::Mounted::start(&store, &[]);
    let plain = disk.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    // Far more than the disk: refused at once, on both.
    for (dir, who) in [(m.path(), "zippyfs"), (plain.as_path(), "ext4")] {
        assert_eq!(
            fallocate_new(dir, "huge", 1 << 30),
            libc::ENOSPC,
            "{who}: 1 GiB on 128 MiB"
        );
        // ext4 keeps what it allocated before it ran out.
        std::fs::remove_file(dir.join("huge")).expect("rm");
    }
    // What fits is granted, and its writes and fsync succeed.
    assert_eq!(fallocate_new(m.path(), "fits", 8 << 20), 0);
    let data = content(8 << 20, 9);
    std::fs::write(m.path().join("fits"), &data).expect("write what was allocated");
    common::fsync_root(m.path());
    assert!(std::fs::read(m.path().join("fits")).expect("read") == data);
    assert!(m.unmount().success());
}

/// Bytes free to an unprivileged writer on the filesystem holding `p`.
fn avail(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs is plain old data, valid zeroed.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0, "statvfs");
    v.f_bavail * v.f_frsize
}

#[test]
fn a_fallocated_file_is_written_in_full_after_other_writers_filled_the_disk() {
    if !common::fuse_or_skip() {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let disk = LoopExt4::new("128M");
    let store = disk.path().join("store");
    let m = common::Mounted::start(&store, &[]);
    const KEPT: usize = 32 << 20;
    let before = avail(m.path());
    assert_eq!(fallocate_new(m.path(), "kept", KEPT as i64), 0);
    assert_eq!(common::daemon_json(m.path())["promised_bytes"], KEPT as u64);
    let after = avail(m.path());
    assert!(
        before.saturating_sub(after) >= KEPT as u64,
        "df does not count the allocation: {before} free before, {after} after"
    );
    // Another writer fills the disk: refused before it takes the promised space.
    let filler = std::fs::File::create(m.path().join("filler")).expect("filler");
    let chunk = content(1 << 20, 3);
    let mut refused = None;
    for i in 0..200u64 {
        let r = filler
            .write_all_at(&chunk, i << 20)
            .and_then(|()| filler.sync_all());
        if let Err(e) = r {
            refused = Some((i, e));
            break;
        }
    }
    let (at, e) = refused.expect("200 MiB never filled a 128 MiB disk");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(at >= 16, "the filler was refused after only {at} MiB");
    drop(filler);
    // The fallocated file takes all it was promised, and it is durable.
    let data = content(KEPT, 11);
    let kept = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path().join("kept"))
        .expect("open kept");
    kept.write_all_at(&data, 0)
        .expect("writing a fallocated range failed");
    kept.sync_all().expect("fsync of a fallocated range failed");
    assert_eq!(kept.metadata().expect("stat").len(), KEPT as u64);
    drop(kept);
    assert_eq!(common::daemon_json(m.path())["promised_bytes"], 0);
    // A promise that is never written goes with its file.
    std::fs::remove_file(m.path().join("filler")).expect("rm filler");
    let spare = std::fs::File::create(m.path().join("spare")).expect("spare");
    // The filler's space comes back once the kernel forgets its inode (on
    // its own time after the unlink) and a commit deletes it.
    let freed = Instant::now();
    loop {
        common::fsync_root(m.path());
        // SAFETY: a plain system call on a descriptor we own.
        if unsafe { libc::fallocate(spare.as_raw_fd(), 0, 0, 4 << 20) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert!(
            freed.elapsed() < Duration::from_secs(20),
            "the deleted filler's space never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(common::daemon_json(m.path())["promised_bytes"], 4 << 20);
    drop(spare);
    std::fs::remove_file(m.path().join("spare")).expect("rm spare");
    // The inode (and its promise) goes when the kernel forgets it, which
    // it does on its own time after the last close.
    let gone = Instant::now();
    while common::daemon_json(m.path())["promised_bytes"] != 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(20),
            "the promise of a deleted file was never let go"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(m.unmount().success());
    let m = common::Mounted::start(&store, &[]);
    assert!(std::fs::read(m.path().join("kept")).expect("read") == data);
    assert!(m.unmount().success());
    common::fsck_clean(&store);
}
