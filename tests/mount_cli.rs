//! The mount command's errors and signals: a mount point that is not a
//! directory, a damaged store and a mount option the kernel refuses are
//! clear errors with a non-zero exit;
//! SIGTERM, SIGINT and `fusermount3 -u` commit and exit cleanly.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn mount_fails(mountpoint: &std::path::Path, store: &std::path::Path, expect: &str) {
    mount_fails_with(&[], mountpoint, store, expect)
}

fn mount_fails_with(
    args: &[&str],
    mountpoint: &std::path::Path,
    store: &std::path::Path,
    expect: &str,
) {
    let out = Command::new(common::bin())
        .args(["mount", "-f"])
        .args(args)
        .arg(mountpoint)
        .arg(store)
        .output()
        .expect("run zippyfs mount");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mount succeeded");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(!common::is_mounted(mountpoint), "something got mounted");
}

#[test]
fn mountpoint_that_is_not_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("file");
    mount_fails(&file, &dir.path().join("store"), "not a directory");
}

#[test]
fn damaged_store_is_a_clear_error() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    std::fs::write(
        store.path().join(zippyfs::store::STORE_FILE),
        vec![0x5au8; 3 * 4096],
    )
    .expect("garbage store");
    let mnt = tempfile::tempdir().expect("mountpoint");
    mount_fails(mnt.path(), store.path(), "not a zippyfs store");
}

#[test]
fn option_the_kernel_refuses_is_named_in_the_error() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let mnt = tempfile::tempdir().expect("mountpoint");
    mount_fails_with(
        &["-o", "noatime,dirty_limt=32M"],
        mnt.path(),
        store.path(),
        "refused an option zippyfs does not know and passed on: dirty_limt=32M",
    );
}

#[test]
fn sync_options_out_of_range_are_refused_by_name() {
    let store = tempfile::tempdir().expect("store");
    let mnt = tempfile::tempdir().expect("mountpoint");
    for (opt, says) in [
        (
            "sync_nice=20",
            "-o sync_nice=20: a number from 0 to 19 is needed",
        ),
        (
            "sync_nice=-1",
            "-o sync_nice=-1: a number from 0 to 19 is needed",
        ),
        (
            "sync_window=4K",
            "-o sync_window=4K: a size of 1M or more is needed",
        ),
    ] {
        mount_fails_with(&["-o", opt], mnt.path(), store.path(), says);
    }
}

fn signal_commits_and_exits(sig: i32) {
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    std::fs::write(m.path().join("kept"), b"written before the signal").expect("write");
    let pid = m.pid() as i32;
    // SAFETY: kill with a valid pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let started = Instant::now();
    while common::is_mounted(m.path()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still mounted after the signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = m.unmount();
    assert!(
        status.success(),
        "daemon exit status after signal {sig}: {status}"
    );
    let m = common::Mounted::start(store.path(), &[]);
    assert_eq!(
        std::fs::read(m.path().join("kept")).expect("read"),
        b"written before the signal"
    );
    assert!(m.unmount().success());
}

#[test]
fn sigterm_and_sigint_commit_and_exit_cleanly() {
    if !common::fuse_or_skip() {
        return;
    }
    signal_commits_and_exits(libc::SIGTERM);
    signal_commits_and_exits(libc::SIGINT);
}

#[test]
fn fusermount3_unmount_commits_and_exits_cleanly() {
    if !common::fuse_or_skip() {
        return;
    }
    common::need_tool("fusermount3", "fuse3");
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    std::fs::write(m.path().join("kept"), b"before fusermount3 -u").expect("write");
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(m.path())
        .status()
        .expect("run fusermount3");
    assert!(st.success(), "fusermount3 -u failed");
    assert!(m.unmount().success());
    let m = common::Mounted::start(store.path(), &[]);
    assert_eq!(
        std::fs::read(m.path().join("kept")).expect("read"),
        b"before fusermount3 -u"
    );
    assert!(m.unmount().success());
}
