//! Every POSIX operation on a real mount, with its error cases: device
//! nodes, fifos and sockets; xattrs; fallocate and SEEK_DATA/SEEK_HOLE;
//! renameat2 flags; open-unlinked files; sparse and > 4 GiB files; long
//! names; permissions as another user. Both daemon modes.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs a libc call returning -1 on error; gives the errno or 0.
fn call(r: libc::c_int) -> i32 {
    if r < 0 { errno() } else { 0 }
}

/// Safe wrappers: each call gets valid, NUL-terminated paths and live buffers.
mod sys {
    use super::*;

    pub fn mkfifo(p: &Path, mode: u32) -> i32 {
        let p = c(p);
        // SAFETY: a valid NUL-terminated path.
        call(unsafe { libc::mkfifo(p.as_ptr(), mode) })
    }

    pub fn mknod(p: &Path, mode: u32, dev: u64) -> i32 {
        let p = c(p);
        // SAFETY: a valid NUL-terminated path.
        call(unsafe { libc::mknod(p.as_ptr(), mode, dev) })
    }

    pub fn setxattr(p: &CString, name: &CString, v: &[u8], flags: i32) -> i32 {
        // SAFETY: valid path and name; the value buffer lives across the call.
        call(unsafe {
            libc::setxattr(p.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), flags)
        })
    }

    /// The result of getxattr into `buf` (its length: 0 asks for the size).
    pub fn getxattr(p: &CString, name: &CString, buf: &mut [u8]) -> isize {
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        // SAFETY: valid path and name; `ptr` is null with length 0 or points into `buf`.
        unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), ptr, buf.len()) }
    }

    pub fn listxattr(p: &CString, buf: &mut [u8]) -> isize {
        // SAFETY: valid path; the buffer lives across the call.
        unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    }

    pub fn removexattr(p: &CString, name: &CString) -> i32 {
        // SAFETY: valid path and name.
        call(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) })
    }

    pub fn lseek(fd: i32, off: i64, whence: i32) -> i64 {
        // SAFETY: lseek on a descriptor the caller keeps open.
        unsafe { libc::lseek(fd, off, whence) }
    }

    pub fn fallocate(fd: i32, mode: i32, off: i64, len: i64) -> i32 {
        // SAFETY: fallocate on a descriptor the caller keeps open.
        call(unsafe { libc::fallocate(fd, mode, off, len) })
    }

    pub fn renameat2(a: &Path, b: &Path, flags: u32) -> i32 {
        let (a, b) = (c(a), c(b));
        // SAFETY: valid absolute paths, so AT_FDCWD is not used.
        call(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        })
    }

    pub fn statvfs(p: &Path) -> Option<libc::statvfs> {
        let p = c(p);
        // SAFETY: statvfs is plain integers, valid when zeroed.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid path and out-pointer.
        (unsafe { libc::statvfs(p.as_ptr(), &mut st) } == 0).then_some(st)
    }
}

fn special_files(root: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let fifo = root.join("fifo");
    assert_eq!(sys::mkfifo(&fifo, 0o644), 0);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .expect("stat fifo")
            .file_type()
            .is_fifo()
    );
    let dev = root.join("chr");
    assert_eq!(
        sys::mknod(&dev, libc::S_IFCHR | 0o600, libc::makedev(1, 3)),
        0
    );
    let m = std::fs::symlink_metadata(&dev).expect("stat chr");
    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(m.rdev(), libc::makedev(1, 3));
    assert_eq!(
        sys::mknod(
            &root.join("blk"),
            libc::S_IFBLK | 0o600,
            libc::makedev(7, 0)
        ),
        0
    );
    let sock = root.join("sock");
    assert_eq!(sys::mknod(&sock, libc::S_IFSOCK | 0o600, 0), 0);
    assert!(
        std::fs::symlink_metadata(&sock)
            .expect("stat sock")
            .file_type()
            .is_socket()
    );
    assert_eq!(sys::mkfifo(&fifo, 0o644), libc::EEXIST);
}

fn xattrs(root: &Path) {
    let f = root.join("x");
    std::fs::write(&f, b"x").expect("create");
    let p = c(&f);
    let name = CString::new("user.color").expect("name");
    assert_eq!(
        sys::setxattr(&p, &name, b"red", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(sys::setxattr(&p, &name, b"red", libc::XATTR_CREATE), 0);
    assert_eq!(
        sys::setxattr(&p, &name, b"blue", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(sys::setxattr(&p, &name, b"green", libc::XATTR_REPLACE), 0);
    let mut buf = [0u8; 64];
    let n = sys::getxattr(&p, &name, &mut buf);
    assert_eq!(&buf[..n as usize], b"green");
    assert_eq!(sys::getxattr(&p, &name, &mut []), 5, "size query");
    assert!(sys::getxattr(&p, &name, &mut buf[..2]) < 0 && errno() == libc::ERANGE);
    let n = sys::listxattr(&p, &mut buf);
    assert_eq!(&buf[..n as usize], b"user.color\0");
    assert_eq!(sys::removexattr(&p, &name), 0);
    assert_eq!(sys::removexattr(&p, &name), libc::ENODATA);
}

fn space(root: &Path) {
    use std::os::fd::AsRawFd;
    let open_rw = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(root.join(name))
            .expect("create")
    };
    let f = open_rw("sparse");
    // More than 4 GiB, sparse.
    let far = 5u64 << 30;
    f.write_all_at(b"end", far).expect("write far");
    f.write_all_at(b"start", 0).expect("write start");
    assert_eq!(f.metadata().expect("stat").len(), far + 3);
    let mut b = [0u8; 3];
    f.read_exact_at(&mut b, far).expect("read far");
    assert_eq!(&b, b"end");
    f.read_exact_at(&mut b, 1 << 30).expect("read hole");
    assert_eq!(b, [0, 0, 0]);
    // With the kernel's writeback cache the kernel answers SEEK_DATA and
    // SEEK_HOLE itself (the whole file is data, the hole is at the end): a
    // valid answer, as for any filesystem without holes. What must hold:
    // the answers lie in the file and data is where data was written.
    let fd = f.as_raw_fd();
    let hole = sys::lseek(fd, 0, libc::SEEK_HOLE);
    assert!(hole > 0 && hole as u64 <= far + 3, "first hole at {hole}");
    assert_eq!(
        sys::lseek(fd, far as i64, libc::SEEK_DATA),
        far as i64,
        "data where it was written"
    );
    assert!(sys::lseek(fd, (far + 10) as i64, libc::SEEK_DATA) < 0 && errno() == libc::ENXIO);
    // fallocate: extend, punch.
    let g = open_rw("alloc");
    assert_eq!(sys::fallocate(g.as_raw_fd(), 0, 0, 1 << 20), 0);
    assert_eq!(g.metadata().expect("stat").len(), 1 << 20);
    g.write_all_at(&[1u8; 200_000], 0).expect("fill");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(sys::fallocate(g.as_raw_fd(), punch, 65_536, 65_536), 0);
    let mut back = vec![0u8; 200_000];
    g.read_exact_at(&mut back, 0).expect("read back");
    assert!(back[..65_536].iter().all(|&x| x == 1));
    assert!(back[65_536..131_072].iter().all(|&x| x == 0));
    assert!(back[131_072..].iter().all(|&x| x == 1));
}

fn renames_and_links(root: &Path) {
    let (a, b) = (root.join("ra"), root.join("rb"));
    std::fs::write(&a, b"A").expect("a");
    std::fs::write(&b, b"B").expect("b");
    assert_eq!(sys::renameat2(&a, &b, libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(sys::renameat2(&a, &b, libc::RENAME_EXCHANGE), 0);
    assert_eq!(std::fs::read(&a).expect("a"), b"B");
    assert_eq!(std::fs::read(&b).expect("b"), b"A");
    std::fs::create_dir(root.join("full")).expect("mkdir");
    std::fs::write(root.join("full/f"), b"").expect("file in dir");
    std::fs::create_dir(root.join("empty")).expect("mkdir");
    let e =
        std::fs::rename(root.join("empty"), root.join("full")).expect_err("dir over non-empty dir");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    let e =
        std::fs::rename(root.join("empty"), root.join("full/sub/x")).expect_err("into missing dir");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = std::fs::rename(root.join("full"), root.join("full/inside")).expect_err("into itself");
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let long = root.join("n".repeat(256));
    assert_eq!(
        std::fs::write(&long, b"")
            .expect_err("long name")
            .raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    std::fs::write(root.join("n".repeat(255)), b"ok").expect("255-byte name");
    // Open, unlink, keep using.
    let path = root.join("gone");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(b"still here", 0).expect("write");
    std::fs::remove_file(&path).expect("unlink");
    assert!(std::fs::metadata(&path).is_err());
    f.write_all_at(b"!", 10).expect("write after unlink");
    let mut buf = [0u8; 11];
    f.read_exact_at(&mut buf, 0).expect("read after unlink");
    assert_eq!(&buf, b"still here!");
    assert_eq!(f.metadata().expect("fstat").nlink(), 0);
}

fn permissions(root: &Path) {
    // As "nobody": no way into a 0700 directory owned by root.
    let d = root.join("private");
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "touch"])
        .arg(d.join("f"))
        .stderr(std::process::Stdio::null())
        .status();
    assert!(
        !status.expect("run setpriv").success(),
        "nobody created a file in a 0700 root directory"
    );
    let st = sys::statvfs(root).expect("statvfs");
    assert!(st.f_namemax >= 255);
    assert!(st.f_blocks > 0);
}

/// Runs `sh -c script` as the user nobody, without capabilities; false if
/// `setpriv` is missing.
fn as_nobody(script: &str) -> bool {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script)
        .status()
        .expect("run setpriv (util-linux)")
        .success()
}

/// Set-user-ID and set-group-ID bits after writes, truncates and chowns by
/// nobody and by root, in `dir`: (file, mode) pairs.
fn set_id_bits_after_writes(dir: &Path) -> Vec<(&'static str, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let files = [
        ("write-suid-sgid-gx", 0o6775),
        ("write-sgid-no-gx", 0o2664),
        ("trunc-suid", 0o4777),
        ("root-write-suid", 0o4777),
        ("root-chown-suid", 0o4777),
    ];
    for (name, mode) in files {
        let p = dir.join(name);
        std::fs::write(&p, b"data").expect("create");
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).expect("chown");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let d = dir.display();
    assert!(
        as_nobody(&format!(
            "printf x >> {d}/write-suid-sgid-gx && printf x >> {d}/write-sgid-no-gx && truncate -s 1 {d}/trunc-suid"
        )),
        "nobody's writes in {d}"
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("root-write-suid"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .expect("root write");
    std::os::unix::fs::chown(dir.join("root-chown-suid"), Some(0), None).expect("chown");
    files
        .iter()
        .map(|(name, _)| {
            let m = std::fs::metadata(dir.join(name))
                .expect("stat")
                .permissions()
                .mode();
            (*name, m & 0o7777)
        })
        .collect()
}

/// What a program sees through descriptors and a working directory whose
/// names are gone: (step, outcome) pairs, errors as errno names.
fn nameless_but_held(dir: &Path) -> Vec<(&'static str, String)> {
    use std::os::unix::fs::FileExt;
    let mut seen = Vec::new();
    let mut note = |step: &'static str, r: std::io::Result<String>| {
        seen.push((
            step,
            r.unwrap_or_else(|e| format!("error {}", e.raw_os_error().unwrap_or(0))),
        ));
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::write(&a, b"old").expect("a");
    std::fs::write(&b, b"new").expect("b");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a)
        .expect("open a");
    std::fs::rename(&b, &a).expect("rename over a");
    // Past the attribute cache and a commit: the daemon is asked.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let st = |f: &std::fs::File| {
        f.metadata()
            .map(|m| format!("nlink {} size {}", m.nlink(), m.len()))
    };
    note("fstat after rename over it", st(&f));
    let mut buf = [0u8; 8];
    note(
        "read",
        f.read_at(&mut buf, 0)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into()),
    );
    note("write", f.write_at(b"XY", 0).map(|n| n.to_string()));
    note("fsync", f.sync_all().map(|_| "ok".into()));
    note(
        "read back",
        f.read_at(&mut buf, 0)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into()),
    );
    note("fstat after write", st(&f));
    note(
        "the name",
        std::fs::read(&a).map(|d| String::from_utf8_lossy(&d).into()),
    );
    drop(f);
    let g = std::fs::File::open(&a).expect("open a again");
    std::fs::remove_file(&a).expect("unlink");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    note("fstat after unlink", st(&g));
    drop(g);
    // A removed directory that is a process's working directory.
    let d = dir.join("cwd");
    std::fs::create_dir(&d).expect("mkdir");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && rmdir \"$1\" && sleep 1.2 && stat -c 'nlink %h' . && touch x; echo \"touch $?\"")
        .arg("sh")
        .arg(&d)
        .output()
        .expect("sh");
    note(
        "stat of a removed cwd, then a create in it",
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', "; ")),
    );
    seen
}

/// Open files and working directories outlive their names, as on ext4.
fn outlive_names(root: &Path) {
    let here = root.join("nameless");
    std::fs::create_dir(&here).expect("mkdir");
    let ext4 = common::Ext4::new();
    let ours = nameless_but_held(&here);
    let theirs = nameless_but_held(ext4.path());
    assert_eq!(ours, theirs, "zippyfs vs ext4");
}

/// The kernel leaves dropping the set-ID bits to us (we take
/// FUSE_HANDLE_KILLPRIV_V2 so it stops asking for `security.capability`
/// before every write); the outcome must be ext4's.
fn set_id_bits(root: &Path) {
    let here = root.join("setid");
    std::fs::create_dir(&here).expect("mkdir");
    std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let ext4 = common::Ext4::new();
    std::fs::set_permissions(ext4.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let ours = set_id_bits_after_writes(&here);
    let theirs = set_id_bits_after_writes(ext4.path());
    assert_eq!(ours, theirs, "set-ID bits after writes: zippyfs vs ext4");
}

#[test]
fn posix_operations_and_their_errors() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        let store = tempfile::tempdir().expect("store");
        let m = common::Mounted::start(store.path(), mode);
        special_files(m.path());
        xattrs(m.path());
        space(m.path());
        renames_and_links(m.path());
        permissions(m.path());
        set_id_bits(m.path());
        assert!(m.unmount().success());
        // And all of it after a remount.
        let m = common::Mounted::start(store.path(), mode);
        assert_eq!(std::fs::read(m.path().join("ra")).expect("ra"), b"B");
        let f = std::fs::File::open(m.path().join("sparse")).expect("sparse");
        assert_eq!(f.metadata().expect("stat").len(), (5u64 << 30) + 3);
        drop(f);
        assert!(m.unmount().success());
    }
}

#[test]
fn open_files_and_working_directories_outlive_their_names_as_on_ext4() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        let store = tempfile::tempdir().expect("store");
        let m = common::Mounted::start(store.path(), mode);
        outlive_names(m.path());
        assert!(m.unmount().success());
        // Nothing nameless is left in the store once everything let go.
        let m = common::Mounted::start(store.path(), mode);
        let left: Vec<_> = std::fs::read_dir(m.path().join("nameless"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(m.unmount().success());
        common::fsck_clean(store.path());
    }
}

#[test]
fn timestamps_never_run_backwards_between_operations_made_in_order() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        let store = tempfile::tempdir().expect("store");
        let m = common::Mounted::start(store.path(), mode);
        let root = m.path();
        // Alternate what the daemon stamps (a create) with what the kernel
        // stamps itself (a write through the writeback cache), and read
        // every time back in the order the operations happened.
        let mut last = (0i64, 0i64);
        let mut prev: Option<PathBuf> = None;
        for i in 0..300 {
            let p = root.join(format!("t{i}"));
            std::fs::File::create(&p).expect("create");
            let created = std::fs::metadata(&p).expect("stat");
            let t = (created.mtime(), created.mtime_nsec());
            assert!(
                t >= last,
                "{mode:?}: t{i} created at {t:?}, before {last:?}"
            );
            last = t;
            if let Some(q) = prev.take() {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&q)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
                    .expect("write");
                let written = std::fs::metadata(&q).expect("stat");
                let t = (written.mtime(), written.mtime_nsec());
                assert!(
                    t >= last,
                    "{mode:?}: {} written at {t:?}, before {last:?}",
                    q.display()
                );
                last = t;
            }
            prev = Some(p);
        }
        assert!(m.unmount().success());
    }
}

/// What `getfacl`, `stat` and a read as nobody show through a round of ACL
/// changes in `dir`: default ACLs inherited (and overriding the umask),
/// chmod rewriting the ACL, an ACL rewriting the mode, the kernel enforcing
/// a named user's entry.
fn acl_story(dir: &Path) -> String {
    common::need_tool("setfacl", "acl");
    let script = r#"
exec 2>&1
umask 022
mkdir d
setfacl -d -m u::rwx,u:65534:rx,g::rx,m::rwx,o::- d
touch d/f; mkdir d/sub
stat -c '%n %a' d/f d/sub
getfacl -n -p --omit-header d/f d/sub
chmod 640 d/f
stat -c '%n %a' d/f; getfacl -n --omit-header d/f
echo secret > g; chmod 600 g
setfacl -m u:65534:r g
stat -c '%n %a' g; getfacl -n --omit-header g
setpriv --reuid=65534 --regid=65534 --clear-groups cat g
setfacl -m u:65534:- g
setpriv --reuid=65534 --regid=65534 --clear-groups cat g
setfacl -b g
stat -c '%n %a' g; getfacl -n --omit-header g
umask 077
touch d/h k
stat -c '%n %a' d/h k
"#;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `story` in a fresh directory (mode 0777) on a zippyfs mount in
/// every mode and on ext4, and asserts both tell the same, and that the
/// story says `expect` (so it did what it set out to). `lasting`, if given,
/// describes the directory again; it must read the same after a remount.
fn same_as_ext4(
    name: &str,
    story: fn(&Path) -> String,
    expect: &str,
    lasting: Option<fn(&Path) -> String>,
) {
    let ext4 = common::Ext4::new();
    std::fs::set_permissions(ext4.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (n, mode) in common::modes().into_iter().enumerate() {
        let store = tempfile::tempdir().expect("store");
        let m = common::Mounted::start(store.path(), mode);
        let dir = format!("{name}{n}");
        let fresh = |root: &Path| {
            let d = root.join(&dir);
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            d
        };
        let ours = story(&fresh(m.path()));
        let theirs = story(&fresh(ext4.path()));
        assert_eq!(ours, theirs, "zippyfs {mode:?} vs ext4");
        assert!(
            theirs.contains(expect),
            "ext4 did not say {expect:?}: {theirs}"
        );
        let Some(lasting) = lasting else {
            assert!(m.unmount().success());
            continue;
        };
        let before = lasting(&m.path().join(&dir));
        assert!(m.unmount().success());
        let m = common::Mounted::start(store.path(), mode);
        assert_eq!(
            lasting(&m.path().join(&dir)),
            before,
            "{mode:?}: after a remount"
        );
        assert!(m.unmount().success());
    }
}

/// The ACLs of what `acl_story` made, as `getfacl` shows them.
fn acls_made(dir: &Path) -> String {
    let out = std::process::Command::new("getfacl")
        .args(["-n", "-p", "d", "d/f", "d/sub", "d/h", "g", "k"])
        .current_dir(dir)
        .output()
        .expect("getfacl");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn posix_acls_behave_as_on_ext4() {
    if !common::fuse_or_skip() {
        return;
    }
    // "secret": nobody read the file through a named user's entry, which
    // the kernel enforces.
    same_as_ext4("acl", acl_story, "secret", Some(acls_made));
}

/// Set-user-ID and set-group-ID through what a caller outside the file's
/// group does (nobody, in a directory of group root): new inodes in a
/// set-group-ID directory, chmod, setfacl, buffered and O_DIRECT writes,
/// truncate and fallocate. `stat` of everything after.
fn setid_story(dir: &Path) -> String {
    common::need_tool("setfacl", "acl");
    let script = r#"
exec 2>&1
mkdir sg; chown 65534:0 sg; chmod 2777 sg
for f in w d t a c x; do echo data > $f; chown 65534:0 $f; chmod 6775 $f; done
as() { setpriv --reuid=65534 --regid=65534 --clear-groups sh -c "$1"; }
as 'umask 022; mkdir sg/sub; touch sg/f; chmod 2775 sg/f'
as 'echo more >> w'
as 'dd if=/dev/zero of=d bs=4096 count=1 oflag=direct conv=notrunc status=none'
as 'truncate -s 1 t'
as 'fallocate -l 8192 a'
as 'chmod 6775 c'
as 'setfacl -m u:1000:r x'
stat -c '%n %a %u:%g' sg sg/sub sg/f w d t a c x
"#;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn set_id_bits_follow_ext4_for_callers_outside_the_group() {
    if !common::fuse_or_skip() {
        return;
    }
    same_as_ext4("setid", setid_story, "sg/sub 2755", None);
}
