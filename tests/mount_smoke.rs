//! The real binary, really mounted: files survive an unmount and a remount;
//! mount errors are clear. Skipped, and counted, where there is no /dev/fuse.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_zippyfs");
const WAIT: Duration = Duration::from_secs(10);

mod common;

fn have_fuse() -> bool {
    common::fuse_or_skip()
}

/// Whether a filesystem is mounted on `dir` (its device differs from its parent's).
fn mounted(dir: &Path) -> bool {
    let parent = dir.parent().expect("mountpoint has a parent");
    match (fs::metadata(dir), fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev(),
        _ => false,
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn umount(dir: &Path, flags: i32) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `c` is a valid NUL-terminated path; no other memory is passed.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts, retrying while the kernel still holds the mount busy.
fn unmount(dir: &Path) {
    let start = Instant::now();
    loop {
        match umount(dir, 0) {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("umount {}: {e}", dir.display()),
        }
    }
}

/// A `zippyfs mount -f` child; on drop (a failed test) it detaches the
/// mount and kills the child, so nothing is left behind.
struct Foreground {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl Foreground {
    fn start(mountpoint: &Path, store: &Path, log: &Path) -> Foreground {
        let err = fs::File::create(log).expect("log file");
        let child = Command::new(BIN)
            .args(["mount", "-f"])
            .arg(mountpoint)
            .arg(store)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("run zippyfs");
        let mut m = Foreground {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
        };
        let start = Instant::now();
        while !mounted(mountpoint) {
            if let Some(st) = m
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!("zippyfs exited ({st}) before mounting:\n{}", m.log());
            }
            assert!(
                start.elapsed() < WAIT,
                "not mounted after {WAIT:?}:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits for the process to finish; its exit status.
    fn unmount(mut self) -> ExitStatus {
        unmount(&self.mountpoint);
        let mut child = self.child.take().expect("child");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if start.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("zippyfs did not exit after the unmount:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if mounted(&self.mountpoint) {
                let _ = umount(&self.mountpoint, libc::MNT_DETACH);
            }
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("zippyfs log:\n{}", self.log());
        }
    }
}

#[test]
fn files_survive_unmount_and_remount() {
    if !have_fuse() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mp = tmp.path().join("mnt");
    let store = tmp.path().join("store");
    fs::create_dir(&mp).expect("mkdir mnt");
    let log = tmp.path().join("zippyfs.stderr");

    let m = Foreground::start(&mp, &store, &log);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(mp.join("a.txt"), &data).expect("write a.txt");
    assert_eq!(fs::read(mp.join("a.txt")).expect("read a.txt"), data);
    fs::create_dir(mp.join("dir")).expect("mkdir");
    fs::write(mp.join("tmp"), b"going").expect("write tmp");
    fs::rename(mp.join("a.txt"), mp.join("dir/b.txt")).expect("rename");
    fs::remove_file(mp.join("tmp")).expect("unlink");
    std::os::unix::fs::symlink("dir/b.txt", mp.join("link")).expect("symlink");
    assert_eq!(fs::read(mp.join("link")).expect("read through link"), data);
    let md = fs::metadata(mp.join("dir/b.txt")).expect("stat");
    assert_eq!(md.len(), data.len() as u64);
    assert!(md.is_file());
    let mut names: Vec<String> = fs::read_dir(&mp)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "link"]);
    assert!(!mp.join("a.txt").exists());
    let st = m.unmount();
    assert!(st.success(), "zippyfs exited with {st}");
    assert!(!mounted(&mp));

    let m = Foreground::start(&mp, &store, &log);
    assert_eq!(
        fs::read(mp.join("dir/b.txt")).expect("read after remount"),
        data
    );
    assert_eq!(
        fs::read_link(mp.join("link")).expect("readlink"),
        Path::new("dir/b.txt")
    );
    assert!(!mp.join("tmp").exists());
    let st = m.unmount();
    assert!(st.success(), "zippyfs exited with {st}");
}

#[test]
fn missing_mountpoint_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope");
    for fg in [true, false] {
        let mut cmd = Command::new(BIN);
        cmd.arg("mount");
        if fg {
            cmd.arg("-f");
        }
        let out = cmd
            .arg(&missing)
            .arg(tmp.path().join("store"))
            .stdin(Stdio::null())
            .output()
            .expect("run zippyfs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {err}");
        assert!(
            err.contains("does not exist") && err.contains("nope"),
            "stderr: {err}"
        );
        assert!(
            !tmp.path().join("store").exists(),
            "nothing is made before the checks pass"
        );
    }
    // A file where the store directory should be.
    let file = tmp.path().join("file");
    fs::write(&file, b"x").expect("write");
    let out = Command::new(BIN)
        .args(["mount", "-f"])
        .arg(tmp.path())
        .arg(&file)
        .output()
        .expect("run zippyfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("not a directory"), "stderr: {err}");
}

/// Finds the daemon serving `mountpoint` (its command line names it).
fn daemon_pid(mountpoint: &Path) -> Option<i32> {
    let needle = mountpoint.as_os_str().as_bytes();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|&b| b == 0).any(|a| a == needle) && cmd.starts_with(BIN.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// A daemon we started; on drop (a failed test) it detaches the mount and
/// kills the daemon by its PID.
struct Daemon {
    mountpoint: PathBuf,
    done: bool,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if mounted(&self.mountpoint) {
            let _ = umount(&self.mountpoint, libc::MNT_DETACH);
        }
        if let Some(pid) = daemon_pid(&self.mountpoint) {
            // SAFETY: kill(2) with the PID of the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn daemon_mount_and_store_in_use() {
    if !have_fuse() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mp = tmp.path().join("mnt");
    let mp2 = tmp.path().join("mnt2");
    let store = tmp.path().join("store");
    fs::create_dir(&mp).expect("mkdir mnt");
    fs::create_dir(&mp2).expect("mkdir mnt2");

    // Without -f: returns once the mount is live, with the daemon serving it.
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&mp)
        .arg(&store)
        .stdin(Stdio::null())
        .output()
        .expect("run zippyfs");
    let mut d = Daemon {
        mountpoint: mp.clone(),
        done: false,
    };
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounted(&mp), "mounted when the command returns");
    fs::write(mp.join("f"), b"daemon").expect("write");
    assert!(
        store.join("zippyfs.log").exists(),
        "the daemon logs to the store directory"
    );

    // The store is locked by the daemon: a second mount fails, in both modes.
    for fg in [true, false] {
        let mut cmd = Command::new(BIN);
        cmd.arg("mount");
        if fg {
            cmd.arg("-f");
        }
        let out = cmd
            .arg(&mp2)
            .arg(&store)
            .stdin(Stdio::null())
            .output()
            .expect("run zippyfs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "second mount succeeded; stderr: {err}"
        );
        assert!(err.contains("in use"), "stderr: {err}");
        assert!(!mounted(&mp2));
    }

    // Unmount: the daemon commits and exits, releasing the store.
    unmount(&mp);
    wait_until("the daemon to exit", || daemon_pid(&d.mountpoint).is_none());
    d.done = true;
    let out = Command::new(BIN)
        .arg("info")
        .arg(&store)
        .output()
        .expect("run zippyfs info");
    assert!(
        out.status.success(),
        "info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fs::read_to_string(store.join("zippyfs.log")).expect("daemon log");
    assert!(log.contains("unmounted"), "daemon log:\n{log}");
}
