//! Mounting the real `zippyfs` binary for integration tests, and taking the
//! mount down again whatever happens.

#![allow(dead_code)]

pub mod sync;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zippyfs")
}

/// Whether this machine can mount FUSE filesystems at all.
pub fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
}

/// A zippyfs mount run in the foreground by a child process.
pub struct Mounted {
    pub mnt: PathBuf,
    pub store: PathBuf,
    child: Option<Child>,
    watchdog: Watchdog,
    _mnt_dir: tempfile::TempDir,
}

/// Whether something other than `dir`'s parent filesystem is mounted there.
pub fn is_mounted(dir: &Path) -> bool {
    let (Ok(a), Some(parent)) = (std::fs::metadata(dir), dir.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != a.dev())
}

impl Mounted {
    /// Mounts the store in `store` (created if needed) with extra arguments
    /// such as `-s`; panics if the mount does not come up in 20 seconds.
    pub fn start(store: &Path, args: &[&str]) -> Mounted {
        Self::start_to(store, args, Stdio::inherit())
    }

    /// [`Mounted::start`], with the daemon's log going to `log`.
    pub fn start_logged(store: &Path, args: &[&str], log: &Path) -> Mounted {
        let f = std::fs::File::create(log).expect("log file");
        Self::start_to(store, args, Stdio::from(f))
    }

    fn start_to(store: &Path, args: &[&str], stderr: Stdio) -> Mounted {
        let mnt_dir = tempfile::tempdir().expect("mountpoint");
        let mnt = mnt_dir.path().to_path_buf();
        let mut cmd = Command::new(bin());
        cmd.arg("mount").arg("-f").args(args).arg(&mnt).arg(store);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("spawn zippyfs mount");
        let mut m = Mounted {
            watchdog: Watchdog::start(child.id(), &mnt),
            mnt,
            store: store.to_path_buf(),
            child: Some(child),
            _mnt_dir: mnt_dir,
        };
        let started = Instant::now();
        while !is_mounted(&m.mnt) {
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("zippyfs mount exited before mounting: {st}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Unmounts and waits for the daemon to exit (killing it after 20 s).
    pub fn unmount(mut self) -> ExitStatus {
        self.take_down(false).expect("daemon exit status")
    }

    /// Unmounts (`umount`, or the signal `sig` to the daemon) and returns
    /// the daemon's exit status and how long it took to exit.
    pub fn stop_timed(mut self, sig: Option<i32>) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let st = match sig {
            None => self.take_down(false),
            Some(sig) => {
                self.watchdog.disarm();
                let mut child = self.child.take().expect("daemon");
                // SAFETY: kill(2) with our own child's pid.
                unsafe { libc::kill(child.id() as i32, sig) };
                loop {
                    if let Ok(Some(st)) = child.try_wait() {
                        break Some(st);
                    }
                    if started.elapsed() > Duration::from_secs(20) {
                        let _ = child.kill();
                        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                        break child.wait().ok();
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        (st.expect("daemon exit status"), started.elapsed())
    }

    /// Kills the daemon with SIGKILL and clears the dead mount.
    pub fn kill9(mut self) {
        self.watchdog.disarm();
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }

    fn take_down(&mut self, lazy: bool) -> Option<ExitStatus> {
        self.watchdog.disarm();
        let mut child = self.child.take()?;
        let mut umount = Command::new("umount");
        if lazy {
            umount.arg("-l");
        }
        let _ = umount.arg(&self.mnt).stderr(Stdio::null()).status();
        let started = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let st = child.wait().ok();
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.take_down(true);
        }
    }
}

/// How long a test may keep one mount before it counts as hung (seconds,
/// `ZIPPY_TEST_HANG_SECS`, default 600). A deadlocked daemon once held CI
/// until its 90 minutes ran out with nothing to show for it.
fn hang_limit() -> Duration {
    let secs = std::env::var("ZIPPY_TEST_HANG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// Watches one daemon: if its mount outlives [`hang_limit`], prints where
/// each of its threads stands (the kernel's stacks, and gdb's backtraces
/// where gdb is installed) and kills it, which aborts the FUSE connection
/// so that the test's stuck calls fail (ENOTCONN) and the test with them.
struct Watchdog {
    /// Set when the test takes the daemon down. Held while killing, so the
    /// pid is never killed after the test has reaped it.
    done: Arc<Mutex<bool>>,
}

impl Watchdog {
    fn start(pid: u32, mnt: &Path) -> Watchdog {
        let done = Arc::new(Mutex::new(false));
        let (flag, mnt) = (Arc::clone(&done), mnt.to_path_buf());
        let limit = hang_limit();
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(250));
                if *flag.lock().unwrap_or_else(|e| e.into_inner()) {
                    return;
                }
            }
            let done = flag.lock().unwrap_or_else(|e| e.into_inner());
            if *done {
                return;
            }
            eprintln!(
                "HUNG: the zippyfs daemon {pid} has served {} for {} s; where its threads stand:\n{}",
                mnt.display(),
                limit.as_secs(),
                thread_report(pid)
            );
            // SAFETY: kill(2) on our child, which is not reaped while `done`
            // is false and held.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        Watchdog { done }
    }

    fn disarm(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// Each thread's name, wait channel and kernel stack, then gdb's
/// backtraces cut to this crate's frames.
fn thread_report(pid: u32) -> String {
    let mut out = String::new();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            out += &format!(
                "thread {} {} waiting in {}\n{}",
                t.file_name().to_string_lossy(),
                read(p.join("comm")).trim(),
                read(p.join("wchan")).trim(),
                read(p.join("stack"))
            );
        }
    }
    match Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                if l.starts_with("Thread ") {
                    out += l;
                    out.push('\n');
                    continue;
                }
                // "#9  0x… in zippyfs::a::b (args…) at src/x.rs:12", or
                // without the address when inlined.
                let Some(frame) = l.strip_prefix('#') else {
                    continue;
                };
                let f = frame.split_once(" in ").map_or(frame, |(_, f)| f);
                let f = f.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
                if f.starts_with("zippyfs::") {
                    let name = f.split(" (").next().unwrap_or(f);
                    let at = f.rsplit_once(" at ").map_or("", |(_, a)| a);
                    out += &format!("    {name} at {at}\n");
                }
            }
        }
        Err(e) => out += &format!("(no backtraces: gdb: {e})\n"),
    }
    out
}

/// The ways to run the daemon: each transport, with one shard per core
/// and with `-s`.
const ALL_MODES: [&[&str]; 4] = [
    &["--transport", "classic"],
    &["--transport", "classic", "-s"],
    &["--transport", "uring"],
    &["--transport", "uring", "-s"],
];

/// Whether the kernel takes FUSE over io_uring now (`.ci/run` turns it on).
pub fn uring_available() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y")
}

/// `zippyfs fsck <store>` on an unmounted store must find nothing.
pub fn fsck_clean(store: &Path) {
    let out = Command::new(bin())
        .arg("fsck")
        .arg(store)
        .output()
        .expect("run fsck");
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where skipped tests are counted: one line each, `test: reason`.
/// `.ci/run` empties it before `cargo test` and prints the count after.
pub const SKIP_LOG: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests");

/// Says on the terminal, and in [`SKIP_LOG`], that something was skipped.
/// Straight to standard error: the test harness captures `eprintln!` of
/// passing tests, and a skip must be seen.
pub fn skipped(what: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {what}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIP_LOG)
    {
        let _ = writeln!(f, "{test}: {what}");
    }
}

/// Whether this test can mount. Without `/dev/fuse` it cannot, and says
/// so (counted in [`SKIP_LOG`]); with it, every mount test runs, and one
/// that cannot is a failure, never a skip.
pub fn fuse_or_skip() -> bool {
    if fuse_available() {
        return true;
    }
    skipped("no /dev/fuse on this machine");
    false
}

/// A tool a test needs. Where FUSE is present (so the test's requirement
/// is), a missing tool is a failure that names the package; elsewhere the
/// test would not have run anyway.
pub fn need_tool(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{tool} is needed and missing: install the Debian package {package}"
    );
}

/// Every mode this kernel can run; the io_uring ones are skipped, saying
/// so, where the kernel has the feature off or lacks it.
pub fn modes() -> Vec<&'static [&'static str]> {
    if uring_available() {
        ALL_MODES.to_vec()
    } else {
        skipped("--transport uring modes (/sys/module/fuse/parameters/enable_uring is not Y)");
        ALL_MODES[..2].to_vec()
    }
}

/// Mode `i` of [`ALL_MODES`], or `None` (saying so) if this kernel cannot
/// run it.
pub fn mode(i: usize) -> Option<&'static [&'static str]> {
    let m = ALL_MODES[i];
    if m.contains(&"uring") && !uring_available() {
        skipped(&format!(
            "{m:?} (/sys/module/fuse/parameters/enable_uring is not Y)"
        ));
        return None;
    }
    Some(m)
}

/// Commits every change of the mount at `root` (an fsync of its root).
pub fn fsync_root(root: &Path) {
    std::fs::File::open(root)
        .and_then(|d| d.sync_all())
        .expect("fsync root");
}

/// The mount's `.zippy/daemon.json` (pid, store, request counters, ...).
pub fn daemon_json(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join(".zippy/daemon.json")).expect("daemon.json"))
        .expect("daemon.json is JSON")
}

/// The kept versions' ids, from the mount's `.zippy/versions.json`.
pub fn version_ids(root: &Path) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(".zippy/versions.json")).expect("versions.json"),
    )
    .expect("versions.json is JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .filter_map(|x| x["id"].as_u64())
        .collect()
}

/// Runs `zippyfs <args> --json` in `cwd`; it must succeed.
pub fn run_json<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
    cwd: &Path,
) -> serde_json::Value {
    let out = Command::new(bin())
        .args(args)
        .arg("--json")
        .current_dir(cwd)
        .output()
        .expect("run zippyfs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// A directory on ext4, the filesystem zippyfs is compared with: in the
/// temporary directory if that is on ext4, else on a small loop-mounted
/// ext4 image made for the test (root), unmounted when dropped. A test that
/// compares with "the local filesystem" must not compare with tmpfs.
pub struct Ext4 {
    dir: tempfile::TempDir,
    /// The image's mountpoint, when one was made.
    loop_mount: Option<tempfile::TempDir>,
}

impl Ext4 {
    pub fn new() -> Ext4 {
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        let tmp = std::env::temp_dir();
        if statfs_type(&tmp) == Some(EXT4_SUPER_MAGIC) {
            return Ext4 {
                dir: tempfile::tempdir().expect("tempdir"),
                loop_mount: None,
            };
        }
        let mnt = tempfile::tempdir().expect("ext4 mountpoint");
        let image = mnt.path().with_extension("img");
        let ok = Command::new("truncate")
            .args(["-s", "256M"])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image)
                .status()
                .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(mnt.path())
                .status()
                .is_ok_and(|s| s.success());
        let _ = std::fs::remove_file(&image);
        assert!(
            ok,
            "{} is not ext4 and no ext4 image could be loop-mounted (needs root and e2fsprogs)",
            tmp.display()
        );
        let dir = tempfile::tempdir_in(mnt.path()).expect("dir on ext4");
        Ext4 {
            dir,
            loop_mount: Some(mnt),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if let Some(m) = &self.loop_mount {
            let _ = std::fs::remove_dir_all(self.dir.path());
            let _ = Command::new("umount").arg("-l").arg(m.path()).status();
        }
    }
}

fn statfs_type(p: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is a plain C struct for which all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// A small tmpfs of our own, unmounted when dropped: a disk that fills up.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tmpfs mountpoint");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "zippytest"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a {size} tmpfs (needs root)");
        SmallDisk { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the disk room: `size` in all (larger than before).
    pub fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "remount the tmpfs at {size}");
    }

    /// Writes a file until the disk is full (bounded: the disk is small).
    pub fn fill(&self) -> PathBuf {
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
