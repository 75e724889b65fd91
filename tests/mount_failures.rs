//! Failures that must be loud: a daemon that could not save what it held
//! says so and exits non-zero.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small tmpfs of our own, unmounted when dropped: a disk that fills up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tmpfs mountpoint");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "zippytest"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a {size} tmpfs (needs root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full (bounded: the disk is small).
    fn fill(&self) -> PathBuf {
        let p = self.path().join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let chunk = vec![0xeeu8; 256 << 10];
        for _ in 0..4096 {
            if f.write_all(&chunk).and_then(|_| f.sync_all()).is_err() {
                return p;
            }
        }
        panic!("the small disk never filled");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

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
    assert!(!again.path().join("lost.bin").exists());
    assert!(again.unmount().success());
}
