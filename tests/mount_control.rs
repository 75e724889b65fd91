//! The daemon's control socket: `zippyfs gc`, `fsck`, `status` and
//! `umount` on a live mount, and what the mount command refuses.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn zippyfs(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(common::bin())
        .args(args)
        .output()
        .expect("run zippyfs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn gc_fsck_and_status_reach_the_daemon_by_its_socket_from_the_mount_or_the_store() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    std::fs::write(m.path().join("f"), b"one").expect("write");
    common::fsync_root(m.path());
    let sock = store.path().join(zippyfs::control::SOCKET);
    assert!(sock.exists(), "no control socket in the store directory");
    for at in [m.path().as_os_str(), store.path().as_os_str()] {
        for op in ["gc", "fsck"] {
            let o = zippyfs(&[op.as_ref(), at]);
            assert!(o.status.success(), "{op} {at:?}: {}", text(&o));
        }
        let o = zippyfs(&["status".as_ref(), at, "--json".as_ref()]);
        assert!(o.status.success(), "status: {}", text(&o));
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(st["state"], "serving");
        assert!(st["failed"].is_null());
        assert_eq!(st["pid"].as_u64(), Some(m.pid() as u64));
        assert!(st["fsck_runs"].as_u64() >= Some(1), "{st}");
    }
    assert!(m.unmount().success());
    assert!(!sock.exists(), "the socket outlived its daemon");
}

#[test]
fn a_planted_daemon_json_makes_no_signal_and_a_clear_error() {
    // Before the control socket, `zippyfs gc` signalled the pid written in
    // the first `.zippy/daemon.json` found walking up from its argument:
    // `{"pid": -1}` made it signal every process of the user. Now it only
    // connects to the socket in the store directory that file names, and
    // trusts it only if root or the caller's user serves it.
    let fake = tempfile::tempdir().expect("fake mount");
    std::fs::create_dir(fake.path().join(".zippy")).expect("mkdir");
    std::fs::write(fake.path().join(".zippy/versions.json"), b"[]").expect("versions");
    let nowhere = fake.path().join("no-store");
    std::fs::write(
        fake.path().join(".zippy/daemon.json"),
        format!(r#"{{"pid": -1, "store": "{}"}}"#, nowhere.display()),
    )
    .expect("daemon.json");
    // A canary that SIGHUP would kill.
    let mut canary = Command::new("sleep").arg("30").spawn().expect("sleep");
    for op in ["gc", "fsck", "status"] {
        let o = zippyfs(&[op.as_ref(), fake.path().as_os_str()]);
        assert!(!o.status.success(), "{op} on a planted file succeeded");
        assert!(text(&o).contains("no daemon answers"), "{op}: {}", text(&o));
    }
    assert!(
        canary.try_wait().expect("canary").is_none(),
        "a process was signalled"
    );
    let _ = canary.kill();
    let _ = canary.wait();
}

#[test]
fn zippyfs_umount_returns_once_the_final_commit_is_durable_and_a_new_mount_follows_at_once() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let mnt = tempfile::tempdir().expect("mountpoint");
    let (m, s) = (mnt.path().as_os_str(), store.path().as_os_str());
    let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    for round in 0..3u8 {
        // Daemon mode, as a user runs it; a long flush interval, so the
        // data is only committed by the final commit.
        let o = zippyfs(&[
            "mount".as_ref(),
            "-o".as_ref(),
            "flush_interval=3600".as_ref(),
            m,
            s,
        ]);
        assert!(o.status.success(), "mount round {round}: {}", text(&o));
        let f = mnt.path().join(format!("f{round}"));
        std::fs::write(&f, &data).expect("write");
        if round == 1 {
            // A plain umount returns before the final commit: the next
            // mount must wait for the old daemon, not fail.
            let st = Command::new("umount")
                .arg(mnt.path())
                .status()
                .expect("umount");
            assert!(st.success());
        } else {
            let o = zippyfs(&["umount".as_ref(), m]);
            assert!(o.status.success(), "zippyfs umount: {}", text(&o));
            // Durable and let go: the store opens here, now.
            let s = zippyfs::store::Store::open(store.path(), Default::default())
                .expect("the store is free once zippyfs umount returns");
            drop(s);
        }
    }
    let o = zippyfs(&["mount".as_ref(), m, s]);
    assert!(o.status.success(), "last mount: {}", text(&o));
    for round in 0..3 {
        let back = std::fs::read(mnt.path().join(format!("f{round}"))).expect("read");
        assert!(back == data, "f{round} differs after the remounts");
    }
    let o = zippyfs(&["umount".as_ref(), m]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_second_mount_on_a_zippyfs_mountpoint_or_of_a_served_store_is_refused_at_once() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let other = tempfile::tempdir().expect("other store");
    let m = common::Mounted::start(store.path(), &[]);
    let started = Instant::now();
    let o = zippyfs(&[
        "mount".as_ref(),
        m.path().as_os_str(),
        other.path().as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already mounted"), "{}", text(&o));
    let mnt2 = tempfile::tempdir().expect("second mountpoint");
    let o = zippyfs(&[
        "mount".as_ref(),
        mnt2.path().as_os_str(),
        store.path().as_os_str(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("in use"), "{t}");
    assert_eq!(
        t.matches("in use").count(),
        1,
        "the cause is said once: {t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refusals must not wait for a daemon that is serving"
    );
    assert!(!common::is_mounted(mnt2.path()));
    assert!(m.unmount().success());
}
