//! File handles (`name_to_handle_at`, `open_by_handle_at`, what NFS export
//! uses) on a real mount, against ext4. A binary of its own: it drops the
//! kernel's caches, which would disturb other tests running beside it.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A file handle of `path` (`name_to_handle_at`), as bytes.
fn handle_of(path: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id = 0;
    // SAFETY: `buf` starts with a `file_handle` header whose handle_bytes
    // (128) is the room after the header; the path is NUL-terminated.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c(path).as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let n = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    buf.truncate(8 + n);
    buf
}

/// Opens a file handle on the filesystem `mount` is in: its first bytes,
/// or the errno.
fn open_handle(mount: &Path, handle: &[u8]) -> Result<Vec<u8>, i32> {
    let m = std::fs::File::open(mount).expect("open the mount");
    let mut h = handle.to_vec();
    // SAFETY: `h` holds a `file_handle` as `name_to_handle_at` made it.
    let fd = unsafe {
        libc::open_by_handle_at(
            std::os::fd::AsRawFd::as_raw_fd(&m),
            h.as_mut_ptr().cast(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a descriptor we just opened and now own.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, 16), &mut out)
        .map_err(|e| e.raw_os_error().unwrap_or(0))?;
    Ok(out)
}

/// The kernel forgets what it can of the filesystem's inodes.
fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches (root)");
}

#[test]
fn file_handles_open_while_their_inode_lives_across_remounts_as_on_ext4() {
    if !common::fuse_or_skip() {
        return;
    }
    let ext4 = common::Ext4::new();
    for (n, mode) in common::modes().into_iter().enumerate() {
        let store = tempfile::tempdir().expect("store");
        let m = common::Mounted::start(store.path(), mode);
        // The same steps on zippyfs and on ext4, outcomes compared.
        let steps = |root: &Path, remount: &mut dyn FnMut() -> PathBuf| {
            std::fs::write(root.join("h"), b"handled").expect("write");
            std::fs::create_dir(root.join("hd")).expect("mkdir");
            std::fs::write(root.join("gone"), b"x").expect("write");
            let (hf, hd, hg) = (
                handle_of(&root.join("h")),
                handle_of(&root.join("hd")),
                handle_of(&root.join("gone")),
            );
            std::fs::remove_file(root.join("gone")).expect("rm");
            std::fs::File::open(root)
                .and_then(|d| d.sync_all())
                .expect("fsync");
            drop_caches();
            let mut seen = vec![
                ("file", open_handle(root, &hf)),
                ("dir", open_handle(root, &hd).map(|_| Vec::new())),
                ("removed", open_handle(root, &hg)),
            ];
            let root = remount();
            seen.push(("file after remount", open_handle(&root, &hf)));
            seen.push((
                "dir after remount",
                open_handle(&root, &hd).map(|_| Vec::new()),
            ));
            seen
        };
        let first = m.path().to_path_buf();
        let mut mounted = Some(m);
        let ours = steps(&first, &mut || {
            let old = mounted.take().expect("mount");
            assert!(old.unmount().success());
            let again = common::Mounted::start(store.path(), mode);
            let p = again.path().to_path_buf();
            mounted = Some(again);
            p
        });
        let dir = ext4.path().join(format!("handles{n}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let theirs = steps(&dir, &mut || dir.clone());
        assert_eq!(ours, theirs, "zippyfs {mode:?} vs ext4");
        assert!(mounted.take().expect("mount").unmount().success());
    }
}
