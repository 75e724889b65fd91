//! The kernel side: a thin adapter from fuser's [`Filesystem`] trait to the
//! FUSE-free core [`Fs`]. Everything here is conversion (kernel types to
//! core types and back, errors to errnos) and the mount's life cycle; every
//! decision about files lives in `fs/`.
//!
//! ## How a mount ends
//!
//! [`mount`] runs the fuser session in the calling thread. Its worker
//! threads block reading `/dev/fuse`; when the filesystem is unmounted
//! (`umount <dir>`, or our own signal handling below) the kernel tears the
//! connection down (for a plain `fuse` mount it sends no `DESTROY`: it aborts
//! the connection) and every read of `/dev/fuse` fails with `ENODEV`. Each
//! worker then returns, the session calls [`Filesystem::destroy`], which
//! commits what is left ([`Fs::shutdown`]), and [`mount`] returns.
//!
//! SIGINT and SIGTERM are turned into that same unmount: a handler writes
//! the signal number into a pipe, and a watcher thread reading the pipe
//! unmounts the filesystem through fuser's [`SessionUnmounter`] (a plain
//! `umount(2)`; if the filesystem is busy, a lazy `MNT_DETACH` unmount,
//! after which the session ends when the last user lets go of it).
//!
//! ## Caching
//!
//! We are the only writer of the filesystem, so the kernel may cache
//! freely: writeback cache, `FOPEN_KEEP_CACHE` on every open, and
//! attributes and entries valid for [`TTL`].

pub mod ring;

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    MountOption, OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session,
    SessionACL, SessionUnmounter, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::fs::{Ctx, Fs, FsError, Inode, Kind, RenameMode, SetAttr, Time};

/// How long the kernel may trust the attributes and directory entries we
/// return. We are the only writer, so the kernel's view only goes stale
/// through changes it made itself (which it knows about); one second keeps
/// `stat`-heavy workloads off the daemon while bounding how long anything
/// surprising (a bug, a future sync from a peer) stays visible.
const TTL: Duration = Duration::from_secs(1);

/// Inode numbers are never reused within a filesystem, so one generation.
const GENERATION: Generation = Generation(0);

/// The largest write request we ask the kernel for.
const MAX_WRITE: u32 = 1 << 20;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOpts {
    /// FUSE worker threads; with more than one, each reads its own clone of
    /// the `/dev/fuse` descriptor.
    pub threads: usize,
    /// Further mount options (`-o`), passed to the kernel mount.
    pub options: Vec<String>,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            threads: 1,
            options: Vec::new(),
        }
    }
}

/// Why a mount failed; each message includes its cause.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount on {}: {error}", .path.display())]
    Mount { path: PathBuf, error: io::Error },
    #[error("cannot set up SIGINT/SIGTERM handling: {0}")]
    Signals(io::Error),
    #[error("the FUSE session failed: {0}")]
    Session(io::Error),
}

/// The fuser [`Filesystem`] over an [`Fs`].
pub struct ZippyFuse {
    fs: Arc<Fs>,
    blksize: u32,
    /// Set once `destroy` has committed the rest.
    destroyed: Arc<AtomicBool>,
    /// The kernel caches writes (set at `init`): the core does not see
    /// data until the kernel writes it back.
    writeback: bool,
}

impl ZippyFuse {
    pub fn new(fs: Arc<Fs>) -> ZippyFuse {
        let blksize = u32::try_from(fs.block_size()).unwrap_or(u32::MAX);
        ZippyFuse {
            fs,
            blksize,
            destroyed: Arc::new(AtomicBool::new(false)),
            writeback: false,
        }
    }

    fn attr(&self, i: &Inode) -> FileAttr {
        FileAttr {
            ino: INodeNo(i.ino),
            size: i.size,
            blocks: i.size.div_ceil(512),
            atime: system_time(i.atime),
            mtime: system_time(i.mtime),
            ctime: system_time(i.ctime),
            crtime: system_time(i.crtime),
            kind: file_type(i.kind),
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            blksize: self.blksize,
            flags: i.flags,
        }
    }

    fn entry(&self, op: &'static str, r: Result<Inode, FsError>, reply: ReplyEntry) {
        match r {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), GENERATION),
            Err(e) => reply.error(errno(op, e)),
        }
    }
}

/// The one place where a core error becomes the errno the kernel sees.
fn errno(op: &'static str, e: FsError) -> Errno {
    let code = e.errno();
    if code != libc::ENOENT {
        tracing::debug!(op, errno = code, "{e}");
    }
    Errno::from_i32(code)
}

fn empty(op: &'static str, r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, e)),
    }
}

fn data(op: &'static str, r: Result<Vec<u8>, FsError>, reply: ReplyData) {
    match r {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(errno(op, e)),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// A core time as a `SystemTime` (times before the epoch included; values
/// a `SystemTime` cannot hold become the epoch).
fn system_time(t: Time) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nsec));
    let at = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    at.and_then(|s| s.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

/// A time from a kernel request as a core time.
///
/// fuser 0.18 builds the `SystemTime` of a request's timestamp as
/// `UNIX_EPOCH - (|sec|, nsec)` when `sec` is negative, which is not the
/// instant the kernel's `(sec, nsec)` timespec means (that would be
/// `UNIX_EPOCH - |sec| + nsec`). This undoes fuser's conversion exactly,
/// recovering the kernel's `(sec, nsec)`.
fn request_time(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(before) => {
            let d = before.duration();
            Time {
                sec: i64::try_from(d.as_secs()).map_or(i64::MIN, |s| -s),
                nsec: d.subsec_nanos(),
            }
        }
    }
}

fn time_or_now(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::Now => Time::now(),
        TimeOrNow::SpecificTime(t) => request_time(t),
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

/// Replies to a `getxattr`/`listxattr` following the FUSE size protocol.
fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    let Ok(len) = u32::try_from(value.len()) else {
        reply.error(Errno::E2BIG);
        return;
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for ZippyFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for (what, flag) in [
            ("writeback cache", InitFlags::FUSE_WRITEBACK_CACHE),
            ("readdirplus", InitFlags::FUSE_DO_READDIRPLUS),
            ("adaptive readdirplus", InitFlags::FUSE_READDIRPLUS_AUTO),
            ("async read", InitFlags::FUSE_ASYNC_READ),
            (
                "parallel directory operations",
                InitFlags::FUSE_PARALLEL_DIROPS,
            ),
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("the kernel does not offer {what}; carrying on without it");
            } else if flag == InitFlags::FUSE_WRITEBACK_CACHE {
                self.writeback = true;
            }
        }
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            tracing::debug!(max_write = nearest, "the largest write size on offer");
            let _ = config.set_max_write(nearest);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.shutdown() {
            tracing::error!("the final commit at unmount failed: {e}");
        }
        self.destroyed.store(true, Ordering::Release);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry("lookup", self.fs.lookup(parent.0, bytes(name)), reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
            ctime: ctime.map(request_time),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        data("readlink", self.fs.readlink(ino.0), reply);
    }

    // The kernel sends `mode` with the caller's umask already applied
    // (fuser does not ask for FUSE_DONT_MASK) and the umask beside it;
    // applying it again is harmless, and right if that ever changes.

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .fs
            .mknod(ctx(req), parent.0, bytes(name), mode & !umask, rdev);
        self.entry("mknod", r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .fs
            .mkdir(ctx(req), parent.0, bytes(name), mode & !umask);
        self.entry("mkdir", r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty("unlink", self.fs.unlink(parent.0, bytes(name)), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty("rmdir", self.fs.rmdir(parent.0, bytes(name)), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.fs.symlink(
            ctx(req),
            parent.0,
            bytes(link_name),
            target.as_os_str().as_bytes(),
        );
        self.entry("symlink", r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            // RENAME_WHITEOUT, combinations, and bits we do not know.
            reply.error(Errno::EINVAL);
            return;
        };
        let r = self
            .fs
            .rename(parent.0, bytes(name), newparent.0, bytes(newname), mode);
        empty("rename", r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(
            "link",
            self.fs.link(ino.0, newparent.0, bytes(newname)),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            // Generated files are read from us every time; the rest keeps
            // the page cache across opens.
            Ok(fh) if self.fs.is_generated(ino.0) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        data(
            "read",
            self.fs.read_handle(ino.0, fh.0, offset, size),
            reply,
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(ino.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", e)),
        }
    }

    /// Called on every `close`: nothing to do (commits follow `release`,
    /// `fsync` and the timer).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty("release", self.fs.release_handle(ino.0, fh.0), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty("fsync", self.fs.fsync(), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    /// Entries from index `offset` of the directory's listing; each entry's
    /// offset is the index of the one after it.
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.fs.readdir(fh.0, ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdir", e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (at, e) in list.iter().enumerate().skip(start) {
            if reply.add(
                INodeNo(e.ino),
                at as u64 + 1,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let list = match self.fs.readdir(fh.0, ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno("readdirplus", e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut added = 0usize;
        for (at, e) in list.iter().enumerate().skip(start) {
            let i = match self.fs.getattr(e.ino) {
                Ok(i) => i,
                // Removed since the listing was taken.
                Err(err) if err.errno() == libc::ENOENT => continue,
                // Send what we have; the kernel asks again from here and
                // then gets the error.
                Err(_) if added > 0 => break,
                Err(err) => return reply.error(errno("readdirplus", err)),
            };
            let full = reply.add(
                INodeNo(e.ino),
                at as u64 + 1,
                OsStr::from_bytes(&e.name),
                &TTL,
                &self.attr(&i),
                GENERATION,
            );
            if full {
                break;
            }
            added += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty("fsyncdir", self.fs.fsync(), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        if position != 0
            || flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0
            || (create && replace)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        empty(
            "setxattr",
            self.fs.setxattr(ino.0, bytes(name), value, create, replace),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, bytes(name)) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(errno("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
                for n in &names {
                    buf.extend_from_slice(n);
                    buf.push(0);
                }
                xattr_reply(&buf, size, reply);
            }
            Err(e) => reply.error(errno("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            "removexattr",
            self.fs.removexattr(ino.0, bytes(name)),
            reply,
        );
    }

    /// Not called with `default_permissions` (the kernel checks); allow.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(ctx(req), parent.0, bytes(name), mode & !umask)
        {
            Ok((i, fh)) => reply.created(
                &TTL,
                &self.attr(&i),
                GENERATION,
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            "fallocate",
            self.fs.fallocate(ino.0, offset, length, mode),
            reply,
        );
    }

    /// No ioctls (fuser's default logs a warning for each, and every
    /// `isatty` on an open file sends one).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// ENOSYS: the kernel stops asking and treats files as always ready.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel stops asking and copies through read and write.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Only SEEK_DATA and SEEK_HOLE get here; the kernel does the rest.
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if self.writeback {
            // With the writeback cache, data the kernel has not written back
            // yet is invisible to the core (the kernel does not flush before
            // FUSE_LSEEK), so the core would report holes, or ENXIO, where
            // there is data. ENOSYS makes the kernel use its generic lseek
            // from now on: the whole file is data, which is always right.
            reply.error(Errno::ENOSYS);
            return;
        }
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(Errno::ENXIO);
            return;
        };
        match self.fs.lseek(ino.0, offset, whence) {
            Ok(at) => match i64::try_from(at) {
                Ok(at) => reply.offset(at),
                Err(_) => reply.error(Errno::EOVERFLOW),
            },
            Err(e) => reply.error(errno("lseek", e)),
        }
    }
}

/// The fuser configuration for a mount.
fn config(opts: &MountOpts) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName("zippyfs".into()),
        MountOption::Subtype("zippyfs".into()),
        MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        c.acl = SessionACL::All;
    }
    for o in opts.options.iter().filter(|o| !o.is_empty()) {
        match mount_option(o) {
            UserOption::Mount(m) => c.mount_options.push(m),
            UserOption::Acl(acl) => c.acl = acl,
        }
    }
    let threads = opts.threads.max(1);
    c.n_threads = Some(threads);
    c.clone_fd = threads > 1;
    c
}

enum UserOption {
    Mount(MountOption),
    Acl(SessionACL),
}

/// A `-o` option as fuser wants it. fuser 0.18 has no `allow_other` /
/// `allow_root` mount options (they are [`SessionACL`]s), and sends a
/// `CUSTOM` option to the kernel as it is, so the options the kernel takes
/// as mount flags (`nosuid`, `noexec`, ...) must be named.
fn mount_option(o: &str) -> UserOption {
    UserOption::Mount(match o {
        "allow_other" => return UserOption::Acl(SessionACL::All),
        "allow_root" => return UserOption::Acl(SessionACL::RootAndOwner),
        "auto_unmount" => MountOption::AutoUnmount,
        "default_permissions" => MountOption::DefaultPermissions,
        "dev" => MountOption::Dev,
        "nodev" => MountOption::NoDev,
        "suid" => MountOption::Suid,
        "nosuid" => MountOption::NoSuid,
        "ro" => MountOption::RO,
        "rw" => MountOption::RW,
        "exec" => MountOption::Exec,
        "noexec" => MountOption::NoExec,
        "atime" => MountOption::Atime,
        "noatime" => MountOption::NoAtime,
        "dirsync" => MountOption::DirSync,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        _ => MountOption::CUSTOM(o.to_string()),
    })
}

/// Mounts `fs` on `mountpoint` and serves it in the calling thread until it
/// is unmounted (by `umount`, or SIGINT/SIGTERM); the final commit has run
/// when this returns.
pub fn mount(fs: Arc<Fs>, mountpoint: &Path, opts: &MountOpts) -> Result<(), MountError> {
    mount_and_notify(fs, mountpoint, opts, || {})
}

/// [`mount`], calling `live` once the mount is live: mounted, with the
/// kernel's INIT answered (fuser's `Session::new` does both before it
/// returns). Requests made from then on wait until the workers start,
/// right after `live` returns.
pub fn mount_and_notify(
    fs: Arc<Fs>,
    mountpoint: &Path,
    opts: &MountOpts,
    live: impl FnOnce(),
) -> Result<(), MountError> {
    let config = config(opts);
    let adapter = ZippyFuse::new(Arc::clone(&fs));
    let destroyed = Arc::clone(&adapter.destroyed);
    let result = run_session(adapter, mountpoint, &config, live);
    // If the session never got to `destroy` (the mount failed), the rest
    // is committed here, and the background committer stops.
    if !destroyed.load(Ordering::Acquire)
        && let Err(e) = fs.shutdown()
    {
        tracing::error!("the final commit failed: {e}");
    }
    if result.is_ok() {
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    }
    result
}

fn run_session(
    adapter: ZippyFuse,
    mountpoint: &Path,
    config: &Config,
    live: impl FnOnce(),
) -> Result<(), MountError> {
    // Handlers first, so a signal during the mount is not fatal (a process
    // killed while mounted leaves a dead mount behind).
    let fs = Arc::clone(&adapter.fs);
    let on_hup = Box::new(move || {
        if let Err(e) = fs.gc() {
            tracing::error!("gc: {e}");
        }
    });
    let fs = Arc::clone(&adapter.fs);
    let on_usr1 = Box::new(move || {
        if let Err(e) = fs.fsck() {
            tracing::error!("fsck: {e}");
        }
    });
    let signals = Signals::install(mountpoint, on_hup, on_usr1).map_err(MountError::Signals)?;
    let mut session =
        Session::new(adapter, mountpoint, config).map_err(|error| MountError::Mount {
            path: mountpoint.to_path_buf(),
            error,
        })?;
    signals.arm(session.unmount_callable());
    live();
    let threads = config.n_threads.unwrap_or(1);
    tracing::info!(mountpoint = %mountpoint.display(), threads, "mounted");
    if threads > 1 {
        pin_workers(threads);
    }
    // Until unmounted; then `destroy` runs (see the module comment).
    let r = session.run().map_err(MountError::Session);
    drop(signals);
    r
}

/// Pins fuser's worker threads, one per CPU: thread-per-core. fuser spawns
/// them inside `Session::run` and names them `fuser-<i>`, so a watcher finds
/// them by name in /proc and pins worker i to CPU i (mod the CPU count).
fn pin_workers(n: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let spawned = std::thread::Builder::new()
        .name("zippy-pin".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut pinned = std::collections::HashSet::new();
            while pinned.len() < n && std::time::Instant::now() < deadline {
                for (tid, i) in fuser_threads() {
                    if pinned.insert(tid) {
                        let cpu = i % cpus;
                        match crate::shard::pin_thread(tid, cpu) {
                            Ok(()) => tracing::debug!(tid, cpu, "pinned FUSE worker {i}"),
                            Err(e) => {
                                tracing::warn!(tid, cpu, "could not pin FUSE worker {i}: {e}")
                            }
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("FUSE workers left unpinned: {e}");
    }
}

/// (thread id, worker index) of this process's fuser workers.
fn fuser_threads() -> Vec<(i32, usize)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let i = comm.trim().strip_prefix("fuser-")?.parse().ok()?;
        Some((tid, i))
    })
    .collect()
}

// ---- SIGINT / SIGTERM ----

/// The write end of the signal pipe, for the handler; -1 when none.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// What the watcher reads to stop.
const STOP: u8 = 0;

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives across the call
        // and the descriptor is non-blocking, so this never waits. A full
        // pipe (many signals at once) loses a byte, which is harmless.
        unsafe {
            libc::write(fd, (&raw const b).cast(), 1);
        }
    }
}

struct Armed {
    unmounter: Option<SessionUnmounter>,
    /// A signal came before the session existed.
    pending: bool,
}

/// SIGINT/SIGTERM handlers that unmount, while a mount runs.
struct Signals {
    writer: io::PipeWriter,
    /// The mountpoint, canonical, for a lazy unmount.
    path: PathBuf,
    watcher: Option<std::thread::JoinHandle<()>>,
    armed: Arc<Mutex<Armed>>,
    old: Vec<(libc::c_int, libc::sigaction)>,
}

/// SIGINT and SIGTERM unmount; SIGHUP applies the store's retention policy
/// now (`zippyfs gc` on a live mount sends it); SIGUSR1 checks the store
/// (`zippyfs fsck` on a live mount).
const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

impl Signals {
    fn install(
        mountpoint: &Path,
        on_hup: Box<dyn Fn() + Send>,
        on_usr1: Box<dyn Fn() + Send>,
    ) -> io::Result<Signals> {
        let (mut reader, writer) = io::pipe()?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
        // SAFETY: fcntl on a descriptor we own; no memory is passed.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if SIGNAL_PIPE
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(io::Error::other(
                "another mount in this process handles the signals",
            ));
        }
        let armed = Arc::new(Mutex::new(Armed {
            unmounter: None,
            pending: false,
        }));
        let path = mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf());
        let watch = Arc::clone(&armed);
        let watch_path = path.clone();
        let watcher = std::thread::Builder::new()
            .name("zippy-signals".into())
            .spawn(move || {
                let mut b = [0u8; 1];
                loop {
                    match reader.read(&mut b) {
                        Ok(0) => return,
                        Ok(_) if b[0] == STOP => return,
                        Ok(_) if b[0] == libc::SIGHUP as u8 => {
                            tracing::info!("SIGHUP: applying the retention policy");
                            on_hup();
                        }
                        Ok(_) if b[0] == libc::SIGUSR1 as u8 => {
                            tracing::info!("SIGUSR1: checking the store");
                            on_usr1();
                        }
                        Ok(_) => {
                            tracing::info!(signal = b[0], "signal received: unmounting");
                            let mut a = watch.lock();
                            match a.unmounter.as_mut() {
                                Some(u) => unmount(u, &watch_path),
                                None => a.pending = true,
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::error!("signal pipe: {e}");
                            return;
                        }
                    }
                }
            });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                SIGNAL_PIPE.store(-1, Ordering::Release);
                return Err(e);
            }
        };
        let mut s = Signals {
            writer,
            path,
            watcher: Some(watcher),
            armed,
            old: Vec::new(),
        };
        for sig in SIGNALS {
            // SAFETY: sigaction is a plain C struct of integers, function
            // pointers and a signal set, for which all-zero is valid.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction =
                on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            // SAFETY: `act.sa_mask` is a valid signal set to initialise.
            unsafe { libc::sigemptyset(&mut act.sa_mask) };
            // SAFETY: valid pointers to initialised structs; the handler
            // only does async-signal-safe work.
            if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
                return Err(io::Error::last_os_error()); // `s` restores the others
            }
            s.old.push((sig, old));
        }
        Ok(s)
    }

    /// From now on a signal unmounts through `u` (at once, if one came).
    fn arm(&self, mut u: SessionUnmounter) {
        let mut a = self.armed.lock();
        if a.pending {
            unmount(&mut u, &self.path);
        }
        a.unmounter = Some(u);
    }
}

/// Unmounts; if the filesystem is busy, detaches it (lazy unmount: the
/// session ends once the last open file or working directory in it goes).
fn unmount(u: &mut SessionUnmounter, path: &Path) {
    let Err(e) = u.unmount() else { return };
    tracing::info!(
        "unmount failed ({e}); detaching instead: the filesystem goes when its last user leaves"
    );
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path; no other memory is passed.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::error!(
            "lazy unmount of {} failed: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for (sig, old) in self.old.drain(..) {
            // SAFETY: restores the action saved by `install`.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        }
        SIGNAL_PIPE.store(-1, Ordering::Release);
        let _ = self.writer.write_all(&[STOP]);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}
