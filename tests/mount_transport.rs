//! Which way requests travel. With `--transport uring` they really go
//! through the io_uring queues (the daemon's counters in `daemon.json`
//! against the operations made); with `classic` no ring is touched. Both
//! transports end quickly on unmount, SIGTERM and SIGINT, and cleanly when
//! unmounted under load. `-o writeback_cache=off` sends writes through at
//! once.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// (transport, requests through rings, requests through /dev/fuse).
fn counters(root: &Path) -> (String, u64, u64) {
    let j = common::daemon_json(root);
    (
        j["transport"].as_str().unwrap_or_default().to_string(),
        j["requests_ring"].as_u64().expect("requests_ring"),
        j["requests_dev"].as_u64().expect("requests_dev"),
    )
}

fn requests_follow_the_transport(mode: &[&str]) {
    let uring = mode.contains(&"uring");
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), mode);
    let (transport, ring0, dev0) = counters(m.path());
    assert_eq!(
        transport,
        if uring { "uring" } else { "classic" },
        "{mode:?}"
    );
    const N: u64 = 300;
    for i in 0..N {
        fs::write(m.path().join(format!("f{i}")), b"payload").expect("create");
    }
    for i in 0..N {
        fs::remove_file(m.path().join(format!("f{i}"))).expect("unlink");
    }
    let (_, ring1, dev1) = counters(m.path());
    let (ring, dev) = (ring1 - ring0, dev1 - dev0);
    println!("{mode:?}: {N} creates + {N} unlinks: {ring} requests by ring, {dev} by /dev/fuse");
    // Every create and every unlink is at least one request (CREATE,
    // UNLINK) that must reach the daemon.
    if uring {
        assert!(ring >= 2 * N, "{mode:?}: only {ring} ring requests");
        // What still comes through /dev/fuse: FORGETs and INTERRUPTs.
        assert!(dev <= N + 10, "{mode:?}: {dev} requests bypassed the ring");
    } else {
        assert_eq!(ring1, 0, "{mode:?}: the classic transport used a ring");
        assert!(dev >= 2 * N, "{mode:?}: only {dev} /dev/fuse requests");
    }
    assert!(m.unmount().success());
}

#[test]
fn requests_go_through_the_transport_asked_for() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        requests_follow_the_transport(mode);
    }
}

/// Unmount, SIGTERM and SIGINT commit and exit with every ring entry
/// registered and waiting in the kernel, and no ring command left behind.
/// Not a timing bound (a daemon that waited out the ring's give-up time
/// would pass or fail one by the machine's noise): the daemon must not
/// have given up on pending commands (its log says so when it does), and
/// must exit at all (20 s: a hang, not a slow exit).
#[test]
fn unmount_and_signals_end_the_daemon_leaving_no_ring_command_pending() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        for sig in [None, Some(libc::SIGTERM), Some(libc::SIGINT)] {
            let store = tempfile::tempdir().expect("store");
            let log = store.path().join("daemon.log");
            let m = common::Mounted::start_logged(store.path(), mode, &log);
            for i in 0..50 {
                fs::write(m.path().join(format!("f{i}")), vec![i as u8; 5000]).expect("write");
            }
            let (status, took) = m.stop_timed(sig);
            println!("{mode:?} {sig:?}: exited {status} after {took:?}");
            assert!(status.success(), "{mode:?} {sig:?}: {status}");
            assert!(
                took < Duration::from_secs(20),
                "{mode:?} {sig:?}: took {took:?} to exit"
            );
            let text = fs::read_to_string(&log).expect("log");
            assert!(
                !text.contains("still pending"),
                "{mode:?} {sig:?}: the daemon gave up on pending ring commands:\n{text}"
            );
            let m = common::Mounted::start(store.path(), mode);
            for i in 0..50 {
                assert_eq!(
                    fs::read(m.path().join(format!("f{i}"))).expect("read back"),
                    vec![i as u8; 5000]
                );
            }
            assert!(m.unmount().success());
        }
    }
}

/// SIGTERM while four threads create, write, fsync, read and remove files: the
/// daemon exits cleanly (no crash, no buffer freed under the kernel) and
/// the store checks clean.
#[test]
fn unmount_under_load_exits_cleanly_and_leaves_a_clean_store() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        let store = tempfile::tempdir().expect("store");
        let m = common::Mounted::start(store.path(), mode);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let load: Vec<_> = (0..4)
            .map(|t| {
                let root = m.path().to_path_buf();
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    // (operation, errno) of every failure.
                    let mut failed: Vec<(&str, i32)> = Vec::new();
                    let mut note = |what: &'static str, r: std::io::Result<()>| match r {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.push((what, e.raw_os_error().unwrap_or(0))),
                    };
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                        let p = root.join(format!("t{t}-{}", n % 20));
                        note("write", fs::write(&p, vec![n as u8; 70_000]));
                        if n.is_multiple_of(2) {
                            // Some fsyncs are waiting on the fsync queue when the signal comes.
                            note("fsync", fs::File::open(&p).and_then(|f| f.sync_all()));
                        }
                        note("read", fs::read(&p).map(|_| ()));
                        note("stat", fs::metadata(&p).map(|_| ()));
                        if n.is_multiple_of(3) {
                            note("remove", fs::remove_file(&p));
                        }
                        n += 1;
                    }
                    failed
                })
            })
            .collect();
        // Load first, then the signal: wait until operations are running.
        let started = Instant::now();
        while done.load(Ordering::Relaxed) < 200 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{mode:?}: the load never ran"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        let before = done.load(Ordering::Relaxed);
        let (status, took) = m.stop_timed(Some(libc::SIGTERM));
        stop.store(true, Ordering::Relaxed);
        let failed: Vec<(&str, i32)> = load
            .into_iter()
            .flat_map(|h| h.join().expect("load"))
            .collect();
        println!(
            "{mode:?}: exited {status} after {took:?}; {before} operations succeeded before the \
             signal, {} failed around it",
            failed.len()
        );
        assert!(status.success(), "{mode:?}: {status}");
        // What an unmount may do to an operation: its connection goes
        // (ENOTCONN, ECONNABORTED), and the files behind the mountpoint
        // are another directory's (ENOENT). Anything else is a bug.
        let unexpected: Vec<_> = failed
            .iter()
            .filter(|(_, e)| ![libc::ENOTCONN, libc::ECONNABORTED, libc::ENOENT].contains(e))
            .collect();
        assert!(unexpected.is_empty(), "{mode:?}: {unexpected:?}");
        common::fsck_clean(store.path());
    }
}

/// WRITE requests served so far, from `daemon.json`.
fn writes_served(root: &Path) -> u64 {
    common::daemon_json(root)["requests_by_opcode"]["16"]
        .as_u64()
        .unwrap_or(0)
}

/// `-o writeback_cache=off` really turns the kernel's writeback cache off:
/// a write reaches the daemon while the file is still open (with the cache
/// on, it waits in the page cache for the close), and what was written
/// reads back the same either way.
#[test]
fn writeback_cache_off_sends_each_write_through_at_once() {
    if !common::fuse_or_skip() {
        return;
    }
    use std::io::Write;
    for (args, through) in [
        (&["--transport", "classic"][..], false),
        (
            &["--transport", "classic", "-o", "writeback_cache=off"][..],
            true,
        ),
    ] {
        let store = tempfile::tempdir().expect("store");
        let m = common::Mounted::start(store.path(), args);
        let path = m.path().join("f");
        let mut f = fs::File::create(&path).expect("create");
        let before = writes_served(m.path());
        f.write_all(&[7u8; 4096]).expect("write");
        let after = writes_served(m.path());
        assert_eq!(
            after > before,
            through,
            "{args:?}: WRITE requests {before} -> {after} before the close"
        );
        drop(f);
        assert_eq!(fs::read(&path).expect("read back"), vec![7u8; 4096]);
        assert!(m.unmount().success());
    }
}
