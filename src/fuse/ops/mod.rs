//! One table from FUSE opcode to handler, shared by both transports (the
//! classic `/dev/fuse` loop and the io_uring queues). A handler decodes its
//! request ([`wire`]), calls the core ([`Fs`]), and encodes the reply body;
//! it holds no filesystem logic. Core errors become errnos here and only
//! here ([`Errno::from`]).

use std::sync::Arc;
use std::time::Duration;

use super::wire::{self, Args, Full, Out, Request, Ttl, op};
use crate::fs::{Ctx, Fs, FsError, RenameMode, SetAttr, Time};

mod open;
use open::{create, open};

/// How long the kernel may trust the attributes and directory entries we
/// return, by default (`-o ttl=SECS`). We are the only writer, so the
/// kernel's view only goes stale through changes it made itself (which it
/// knows about); one second keeps `stat`-heavy workloads off the daemon
/// while bounding how long anything surprising (a bug, a future sync from
/// a peer) stays visible.
pub const TTL: Duration = Duration::from_secs(1);

const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// In `fuse_open_in.open_flags`: an O_TRUNC open by a caller without
/// CAP_FSETID must drop set-user-ID and set-group-ID.
const FUSE_OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// In `fuse_write_in.write_flags`: the same, for a write.
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
const FOPEN_KEEP_CACHE: u32 = 1 << 1;

/// A positive errno for the reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<FsError> for Errno {
    /// The one place where a core error becomes the errno the kernel sees.
    fn from(e: FsError) -> Errno {
        let code = e.errno();
        if code != libc::ENOENT {
            tracing::debug!(errno = code, "{e}");
        }
        Errno(code)
    }
}

impl From<Full> for Errno {
    /// A reply larger than the buffer the kernel gave: a bug on our side
    /// (every handler checks the size it was asked for), not worth a panic.
    fn from(_: Full) -> Errno {
        tracing::warn!("a reply did not fit the kernel's buffer");
        Errno(libc::EIO)
    }
}

const EINVAL: Errno = Errno(libc::EINVAL);

type Res = Result<(), Errno>;

/// What a transport does after a handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the body written into [`Out`] (error 0), or just the header
    /// with this errno.
    Reply(Option<Errno>),
    /// The opcode takes no reply (FORGET, INTERRUPT, ...).
    None,
    /// The reply waits for a commit of every change so far (`fsync`): the
    /// transport hands it to the fsync queue (`super::fsyncs`), or answers
    /// after [`Ops::commit_wait`] where it has none.
    Commit,
}

/// The state handlers share: the core and what INIT settled.
pub struct Ops {
    pub fs: Arc<Fs>,
    /// Requests served, for `daemon.json`.
    pub counts: Arc<super::counts::RequestCounts>,
    /// Where notifications to the kernel go (the session's `/dev/fuse`).
    notify: Option<std::os::fd::OwnedFd>,
    ttl: Ttl,
    /// The kernel caches writes (negotiated at INIT): the core does not see
    /// data until the kernel writes it back.
    writeback: bool,
}

impl Ops {
    pub fn new(fs: Arc<Fs>, writeback: bool, ttl: Duration) -> Ops {
        let blksize = u32::try_from(fs.block_size()).unwrap_or(u32::MAX);
        Ops {
            fs,
            counts: Arc::default(),
            notify: None,
            ttl: Ttl {
                secs: ttl.as_secs(),
                nanos: ttl.subsec_nanos(),
                blksize,
            },
            writeback,
        }
    }

    /// Sends notifications to the kernel through `fd` (the session's
    /// `/dev/fuse`).
    pub fn notify_through(&mut self, fd: std::os::fd::OwnedFd) {
        self.notify = Some(fd);
    }

    /// Drops set-ID bits (and file capabilities) as a write by an
    /// unprivileged caller must, and tells the kernel its cached mode is
    /// stale (it keeps it for the attribute timeout otherwise, and a
    /// `stat` right after the write would show the bits still set).
    fn kill_privs(&self, ino: u64) -> Res {
        if self.fs.kill_privs(ino)? {
            self.tell_attrs_changed(ino);
        }
        Ok(())
    }

    /// Tells the kernel its cached attributes of `ino` are stale.
    fn tell_attrs_changed(&self, ino: u64) {
        if let Some(fd) = &self.notify {
            use std::os::fd::AsFd;
            if let Err(e) = wire::notify_inval_attrs(fd.as_fd(), ino) {
                tracing::debug!(ino, "could not invalidate the kernel's attributes: {e}");
            }
        }
    }

    /// Commits every change so far and waits until it is durable: the
    /// answer to an [`Outcome::Commit`] (its errno, or 0).
    pub fn commit_wait(&self) -> i32 {
        match self.fs.fsync() {
            Ok(()) => 0,
            Err(e) => -Errno::from(e).0,
        }
    }

    /// Runs the handler of `req`'s opcode, writing the reply body to `out`.
    pub fn dispatch(&self, req: &Request, out: &mut Out) -> Outcome {
        self.counts.count_op(req.hdr.opcode);
        let Some(h) = handler(req.hdr.opcode) else {
            tracing::debug!(opcode = req.hdr.opcode, "unsupported opcode: ENOSYS");
            return Outcome::Reply(Some(Errno(libc::ENOSYS)));
        };
        tracing::trace!(
            op = h.name,
            node = req.hdr.nodeid,
            unique = req.hdr.unique,
            "request"
        );
        if h.commit {
            return Outcome::Commit;
        }
        let r = (h.run)(self, req, out);
        if !h.reply {
            return Outcome::None;
        }
        match r {
            Ok(()) => Outcome::Reply(None),
            Err(e) => {
                if e.0 != libc::ENOENT {
                    tracing::debug!(op = h.name, errno = e.0, "failed");
                }
                Outcome::Reply(Some(e))
            }
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy)]
pub struct Handler {
    pub name: &'static str,
    /// Size of the opcode's fixed struct (arg 0): where a `/dev/fuse`
    /// request's body splits into `op` and `payload`.
    pub arg: usize,
    /// Whether the kernel waits for a reply.
    pub reply: bool,
    /// The reply waits for a commit ([`Outcome::Commit`]).
    pub commit: bool,
    run: fn(&Ops, &Request, &mut Out) -> Res,
}

const fn h(
    name: &'static str,
    arg: usize,
    run: fn(&Ops, &Request, &mut Out) -> Res,
) -> Option<Handler> {
    Some(Handler {
        name,
        arg,
        reply: true,
        commit: false,
        run,
    })
}

/// A request the kernel expects no reply to, with a handler.
const fn silent(
    name: &'static str,
    arg: usize,
    run: fn(&Ops, &Request, &mut Out) -> Res,
) -> Option<Handler> {
    match h(name, arg, run) {
        Some(x) => Some(Handler { reply: false, ..x }),
        None => None,
    }
}

const fn no_reply(name: &'static str, arg: usize) -> Option<Handler> {
    silent(name, arg, |_, _, _| Ok(()))
}

/// A request whose reply waits for a commit of every change so far.
const fn commit_wait(name: &'static str, arg: usize) -> Option<Handler> {
    Some(Handler {
        name,
        arg,
        reply: true,
        commit: true,
        run: |_, _, _| Ok(()),
    })
}

const TABLE_LEN: usize = 64;

/// Opcode → handler. Sizes are those of protocol 7.40 (what we negotiate):
/// `fuse_setxattr_in` is its 16-byte form because we ask for
/// FUSE_SETXATTR_EXT (a mount refuses a kernel without it).
static TABLE: [Option<Handler>; TABLE_LEN] = {
    let mut t: [Option<Handler>; TABLE_LEN] = [None; TABLE_LEN];
    t[op::LOOKUP as usize] = h("lookup", 0, lookup);
    // Lookup counts keep an inode without names alive while the kernel
    // holds it (`Fs::remember`, `Fs::forget`).
    t[op::FORGET as usize] = silent("forget", 8, forget);
    t[op::BATCH_FORGET as usize] = silent("batch_forget", 8, batch_forget);
    // Requests are served without blocking on anything a signal could
    // cut short, so an interrupted request simply completes.
    t[op::INTERRUPT as usize] = no_reply("interrupt", 8);
    t[op::NOTIFY_REPLY as usize] = no_reply("notify_reply", 0);
    t[op::GETATTR as usize] = h("getattr", 16, getattr);
    t[op::SETATTR as usize] = h("setattr", 88, setattr);
    t[op::READLINK as usize] = h("readlink", 0, readlink);
    t[op::SYMLINK as usize] = h("symlink", 0, symlink);
    t[op::MKNOD as usize] = h("mknod", 16, mknod);
    t[op::MKDIR as usize] = h("mkdir", 8, mkdir);
    t[op::UNLINK as usize] = h("unlink", 0, unlink);
    t[op::RMDIR as usize] = h("rmdir", 0, rmdir);
    t[op::RENAME as usize] = h("rename", 8, rename);
    t[op::RENAME2 as usize] = h("rename2", 16, rename2);
    t[op::LINK as usize] = h("link", 8, link);
    t[op::OPEN as usize] = h("open", 8, open);
    t[op::READ as usize] = h("read", 40, read);
    t[op::WRITE as usize] = h("write", 40, write);
    t[op::STATFS as usize] = h("statfs", 0, statfs);
    t[op::RELEASE as usize] = h("release", 24, release);
    t[op::FSYNC as usize] = commit_wait("fsync", 16);
    t[op::SETXATTR as usize] = h("setxattr", 16, setxattr);
    t[op::GETXATTR as usize] = h("getxattr", 8, getxattr);
    t[op::LISTXATTR as usize] = h("listxattr", 8, listxattr);
    t[op::REMOVEXATTR as usize] = h("removexattr", 0, removexattr);
    // Sent on every close. Nothing to do (commits follow release, fsync
    // and the timer), and ENOSYS tells the kernel not to send it again: it
    // still writes cached data back before close returns.
    t[op::FLUSH as usize] = h("flush", 24, |_, _, _| Err(Errno(libc::ENOSYS)));
    t[op::OPENDIR as usize] = h("opendir", 8, opendir);
    t[op::READDIR as usize] = h("readdir", 40, readdir);
    t[op::READDIRPLUS as usize] = h("readdirplus", 40, readdirplus);
    t[op::RELEASEDIR as usize] = h("releasedir", 24, releasedir);
    t[op::FSYNCDIR as usize] = commit_wait("fsyncdir", 16);
    // Not sent with `default_permissions` (the kernel checks); allow.
    t[op::ACCESS as usize] = h("access", 8, ok);
    t[op::CREATE as usize] = h("create", 16, create);
    t[op::DESTROY as usize] = h("destroy", 0, ok);
    // No ioctls; every `isatty` on an open file asks.
    t[op::IOCTL as usize] = h("ioctl", 32, |_, _, _| Err(Errno(libc::ENOTTY)));
    t[op::FALLOCATE as usize] = h("fallocate", 32, fallocate);
    t[op::LSEEK as usize] = h("lseek", 24, lseek);
    t[op::SYNCFS as usize] = commit_wait("syncfs", 8);
    // POLL and COPY_FILE_RANGE are absent: ENOSYS makes the kernel treat
    // files as always ready and copy through read and write.
    t
};

/// The handler of `opcode`, if we serve it.
pub fn handler(opcode: u32) -> Option<&'static Handler> {
    TABLE.get(usize::try_from(opcode).ok()?)?.as_ref()
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.hdr.uid,
        gid: req.hdr.gid,
        umask: 0,
    }
}

/// The caller, with the umask its request carried (FUSE_DONT_MASK: the
/// kernel leaves applying it to us, since a default ACL overrides it).
fn ctx_masked(req: &Request, umask: u32) -> Ctx {
    Ctx { umask, ..ctx(req) }
}

fn ok(_: &Ops, _: &Request, _: &mut Out) -> Res {
    Ok(())
}

fn name<'a>(req: &Request<'a>) -> Result<&'a [u8], Errno> {
    Args::new(req.payload).name().ok_or(EINVAL)
}

/// An entry reply: the kernel will hold a reference to `i` until it sends
/// FORGET, so the core counts it.
fn entry(o: &Ops, out: &mut Out, i: &crate::fs::Inode) -> Res {
    out.entry(i, o.ttl)?;
    o.fs.remember(i.ino);
    Ok(())
}

/// `fuse_forget_in`: nlookup (u64).
fn forget(o: &Ops, req: &Request, _: &mut Out) -> Res {
    let n = Args::new(req.op).u64().ok_or(EINVAL)?;
    Ok(o.fs.forget(req.hdr.nodeid, n)?)
}

/// `fuse_batch_forget_in`: count, dummy (u32); payload: `count` times
/// `fuse_forget_one`: nodeid, nlookup (u64).
fn batch_forget(o: &Ops, req: &Request, _: &mut Out) -> Res {
    let count = Args::new(req.op).u32().ok_or(EINVAL)?;
    let mut a = Args::new(req.payload);
    for _ in 0..count {
        let (ino, n) = a.u64().zip(a.u64()).ok_or(EINVAL)?;
        o.fs.forget(ino, n)?;
    }
    Ok(())
}

fn lookup(o: &Ops, req: &Request, out: &mut Out) -> Res {
    match o.fs.lookup(req.hdr.nodeid, name(req)?) {
        Ok(i) => entry(o, out, &i),
        // A negative entry (node 0) the kernel may cache for the TTL, as it
        // caches positive ones: a name looked up again (a create right
        // after its failed lookup, a search path) costs no request.
        Err(e) if e.errno() == libc::ENOENT => Ok(out.negative_entry(o.ttl)?),
        Err(e) => Err(e.into()),
    }
}

fn getattr(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let i = o.fs.getattr(req.hdr.nodeid)?;
    Ok(out.attr_out(&i, o.ttl)?)
}

/// `fuse_setattr_in` (88 bytes): valid u32, padding u32, fh, size,
/// lock_owner, atime, mtime, ctime (u64), atimensec, mtimensec, ctimensec,
/// mode, unused, uid, gid, unused (u32).
fn setattr(o: &Ops, req: &Request, out: &mut Out) -> Res {
    const MODE: u32 = 1 << 0;
    const UID: u32 = 1 << 1;
    const GID: u32 = 1 << 2;
    const SIZE: u32 = 1 << 3;
    const ATIME: u32 = 1 << 4;
    const MTIME: u32 = 1 << 5;
    const ATIME_NOW: u32 = 1 << 7;
    const MTIME_NOW: u32 = 1 << 8;
    const CTIME: u32 = 1 << 10;
    const KILL_SUIDGID: u32 = 1 << 11;
    let mut kill = false;
    let mut parse = || {
        let mut a = Args::new(req.op);
        let valid = a.u32()?;
        kill = valid & KILL_SUIDGID != 0;
        a.skip(4 + 8)?; // padding, fh
        let size = a.u64()?;
        a.skip(8)?; // lock_owner
        let (atime, mtime, ctime) = (a.u64()?, a.u64()?, a.u64()?);
        let (atimensec, mtimensec, ctimensec) = (a.u32()?, a.u32()?, a.u32()?);
        let mode = a.u32()?;
        a.skip(4)?;
        let (uid, gid) = (a.u32()?, a.u32()?);
        let when = |set: u32, now: u32, sec: u64, nsec: u32| {
            if valid & now != 0 {
                Some(Time::now())
            } else if valid & set != 0 {
                Some(wire::time(sec, nsec))
            } else {
                None
            }
        };
        Some(SetAttr {
            mode: (valid & MODE != 0).then_some(mode),
            uid: (valid & UID != 0).then_some(uid),
            gid: (valid & GID != 0).then_some(gid),
            size: (valid & SIZE != 0).then_some(size),
            atime: when(ATIME, ATIME_NOW, atime, atimensec),
            mtime: when(MTIME, MTIME_NOW, mtime, mtimensec),
            ctime: when(CTIME, 0, ctime, ctimensec),
        })
    };
    let set = parse().ok_or(EINVAL)?;
    // A truncate or chown by a caller without CAP_FSETID (the kernel
    // decides, and leaves the dropping to us).
    if kill {
        o.fs.kill_privs(req.hdr.nodeid)?;
    }
    let i = o.fs.setattr(req.hdr.nodeid, set)?;
    Ok(out.attr_out(&i, o.ttl)?)
}

fn readlink(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let target = o.fs.readlink(req.hdr.nodeid)?;
    Ok(out.bytes(&target)?)
}

/// Payload: name, NUL, target, NUL.
fn symlink(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let mut a = Args::new(req.payload);
    let (name, target) = a.name().zip(a.name()).ok_or(EINVAL)?;
    let i = o.fs.symlink(ctx(req), req.hdr.nodeid, name, target)?;
    entry(o, out, &i)
}

// The kernel sends `mode` without the caller's umask (we ask for
// FUSE_DONT_MASK) and the umask beside it: the core applies it, unless the
// directory's default ACL decides the new inode's permissions.

/// `fuse_mknod_in`: mode, rdev, umask, padding (u32).
fn mknod(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let mut a = Args::new(req.op);
    let (mode, rdev, umask) = (|| Some((a.u32()?, a.u32()?, a.u32()?)))().ok_or(EINVAL)?;
    let i = o.fs.mknod(
        ctx_masked(req, umask),
        req.hdr.nodeid,
        name(req)?,
        mode,
        rdev,
    )?;
    entry(o, out, &i)
}

/// `fuse_mkdir_in`: mode, umask (u32).
fn mkdir(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let mut a = Args::new(req.op);
    let (mode, umask) = a.u32().zip(a.u32()).ok_or(EINVAL)?;
    let i =
        o.fs.mkdir(ctx_masked(req, umask), req.hdr.nodeid, name(req)?, mode)?;
    entry(o, out, &i)
}

fn unlink(o: &Ops, req: &Request, _: &mut Out) -> Res {
    Ok(o.fs.unlink(req.hdr.nodeid, name(req)?)?)
}

fn rmdir(o: &Ops, req: &Request, _: &mut Out) -> Res {
    Ok(o.fs.rmdir(req.hdr.nodeid, name(req)?)?)
}

/// `fuse_rename_in`: newdir u64; payload: old name, NUL, new name, NUL.
fn rename(o: &Ops, req: &Request, _: &mut Out) -> Res {
    let newdir = Args::new(req.op).u64().ok_or(EINVAL)?;
    do_rename(o, req, newdir, 0)
}

/// `fuse_rename2_in`: newdir u64, flags u32, padding u32.
fn rename2(o: &Ops, req: &Request, _: &mut Out) -> Res {
    let mut a = Args::new(req.op);
    let (newdir, flags) = a.u64().zip(a.u32()).ok_or(EINVAL)?;
    do_rename(o, req, newdir, flags)
}

fn do_rename(o: &Ops, req: &Request, newdir: u64, flags: u32) -> Res {
    let mode = match flags {
        0 => RenameMode::Replace,
        libc::RENAME_NOREPLACE => RenameMode::NoReplace,
        libc::RENAME_EXCHANGE => RenameMode::Exchange,
        // RENAME_WHITEOUT, combinations, and bits we do not know.
        _ => return Err(EINVAL),
    };
    let mut a = Args::new(req.payload);
    let (old, new) = a.name().zip(a.name()).ok_or(EINVAL)?;
    Ok(o.fs.rename(req.hdr.nodeid, old, newdir, new, mode)?)
}

/// `fuse_link_in`: oldnodeid u64; payload: the new name. The request's
/// node is the new parent.
fn link(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let ino = Args::new(req.op).u64().ok_or(EINVAL)?;
    let i = o.fs.link(ino, req.hdr.nodeid, name(req)?)?;
    entry(o, out, &i)
}

/// `fuse_read_in` (40 bytes): fh, offset (u64), size, read_flags (u32),
/// lock_owner u64, flags, padding (u32).
fn read_in(req: &Request) -> Result<(u64, u64, u32), Errno> {
    let mut a = Args::new(req.op);
    (|| Some((a.u64()?, a.u64()?, a.u32()?)))().ok_or(EINVAL)
}

fn read(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let (fh, offset, size) = read_in(req)?;
    let data = o.fs.read_handle(req.hdr.nodeid, fh, offset, size)?;
    Ok(out.bytes(&data)?)
}

/// `fuse_write_in` (40 bytes): fh, offset (u64), size, write_flags (u32),
/// lock_owner u64, flags, padding (u32); payload: the data.
fn write(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let mut a = Args::new(req.op);
    let (_fh, offset, size, write_flags) =
        (|| Some((a.u64()?, a.u64()?, a.u32()?, a.u32()?)))().ok_or(EINVAL)?;
    if write_flags & FUSE_WRITE_KILL_SUIDGID != 0 {
        o.kill_privs(req.hdr.nodeid)?;
    }
    let data = req
        .payload
        .get(..usize::try_from(size).map_err(|_| EINVAL)?)
        .ok_or(EINVAL)?;
    let n = o.fs.write(req.hdr.nodeid, offset, data)?;
    out.u32(n)?;
    Ok(out.u32(0)?)
}

/// `fuse_statfs_out`: blocks, bfree, bavail, files, ffree (u64), bsize,
/// namelen, frsize, padding, spare[6] (u32).
fn statfs(o: &Ops, _: &Request, out: &mut Out) -> Res {
    let s = o.fs.statfs()?;
    for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
        out.u64(v)?;
    }
    for v in [s.bsize, s.namelen, s.bsize, 0] {
        out.u32(v)?;
    }
    Ok(out.zeros(24)?)
}

/// `fuse_release_in`: fh u64, flags, release_flags (u32), lock_owner u64.
fn release(o: &Ops, req: &Request, _: &mut Out) -> Res {
    let fh = Args::new(req.op).u64().ok_or(EINVAL)?;
    Ok(o.fs.release_handle(req.hdr.nodeid, fh)?)
}

/// `fuse_setxattr_in` (16 bytes with FUSE_SETXATTR_EXT): size, flags,
/// setxattr_flags, padding (u32); payload: name, NUL, value.
fn setxattr(o: &Ops, req: &Request, _: &mut Out) -> Res {
    /// In `setxattr_flags`: setting this ACL must drop set-group-ID (the
    /// caller is outside the file's group and lacks CAP_FSETID).
    const FUSE_SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
    let mut a = Args::new(req.op);
    let (size, flags) = a.u32().zip(a.u32()).ok_or(EINVAL)?;
    let kill_sgid = a
        .u32()
        .is_some_and(|f| f & FUSE_SETXATTR_ACL_KILL_SGID != 0);
    let flags = flags as i32;
    let mut p = Args::new(req.payload);
    let name = p.name().ok_or(EINVAL)?;
    let value = p
        .bytes(usize::try_from(size).map_err(|_| EINVAL)?)
        .ok_or(EINVAL)?;
    let create = flags & libc::XATTR_CREATE != 0;
    let replace = flags & libc::XATTR_REPLACE != 0;
    if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 || (create && replace) {
        return Err(EINVAL);
    }
    o.fs.setxattr(req.hdr.nodeid, name, value, create, replace)?;
    if kill_sgid && o.fs.drop_sgid(req.hdr.nodeid)? {
        o.tell_attrs_changed(req.hdr.nodeid);
    }
    Ok(())
}

/// `fuse_getxattr_in`: size, padding (u32). Size 0 asks for the length
/// (`fuse_getxattr_out`: size, padding); too small a size is ERANGE.
fn xattr_reply(req: &Request, value: &[u8], out: &mut Out) -> Res {
    let size = Args::new(req.op).u32().ok_or(EINVAL)?;
    let len = u32::try_from(value.len()).map_err(|_| Errno(libc::E2BIG))?;
    if size == 0 {
        out.u32(len)?;
        Ok(out.u32(0)?)
    } else if len > size {
        Err(Errno(libc::ERANGE))
    } else {
        Ok(out.bytes(value)?)
    }
}

fn getxattr(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let v = o.fs.getxattr(req.hdr.nodeid, name(req)?)?;
    xattr_reply(req, &v, out)
}

fn listxattr(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let names = o.fs.listxattr(req.hdr.nodeid)?;
    let mut buf = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
    for n in &names {
        buf.extend_from_slice(n);
        buf.push(0);
    }
    xattr_reply(req, &buf, out)
}

fn removexattr(o: &Ops, req: &Request, _: &mut Out) -> Res {
    Ok(o.fs.removexattr(req.hdr.nodeid, name(req)?)?)
}

fn opendir(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let fh = o.fs.opendir(req.hdr.nodeid)?;
    Ok(out.open_out(fh, 0)?)
}

/// Entries from index `offset` of the directory's listing; each entry's
/// offset is the index of the one after it.
fn readdir(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let (fh, offset, size) = read_in(req)?;
    let list = o.fs.readdir(fh, req.hdr.nodeid, offset)?;
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let limit = size as usize;
    for (at, e) in list.iter().enumerate().skip(start) {
        if !out.dirent(e.ino, at as u64 + 1, e.kind, &e.name, limit) {
            break;
        }
    }
    Ok(())
}

/// Like [`readdir`], each entry preceded by its `fuse_entry_out`.
fn readdirplus(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let (fh, offset, size) = read_in(req)?;
    let list = o.fs.readdir(fh, req.hdr.nodeid, offset)?;
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let limit = size as usize;
    for (at, e) in list.iter().enumerate().skip(start) {
        if out.len() + wire::ENTRY_OUT_LEN + wire::dirent_size(e.name.len()) > limit {
            break;
        }
        let i = match o.fs.getattr(e.ino) {
            Ok(i) => i,
            // Removed since the listing was taken.
            Err(err) if err.errno() == libc::ENOENT => continue,
            // Send what we have; the kernel asks again from here and then
            // gets the error.
            Err(_) if !out.is_empty() => break,
            Err(err) => return Err(err.into()),
        };
        out.entry(&i, o.ttl)?;
        if !out.dirent(e.ino, at as u64 + 1, e.kind, &e.name, limit) {
            return Err(Full.into()); // the room was checked above
        }
        // The kernel takes a reference for every entry but `.` and `..`.
        if e.name != b"." && e.name != b".." {
            o.fs.remember(i.ino);
        }
    }
    Ok(())
}

fn releasedir(o: &Ops, req: &Request, _: &mut Out) -> Res {
    let fh = Args::new(req.op).u64().ok_or(EINVAL)?;
    o.fs.releasedir(fh);
    Ok(())
}

/// `fuse_fallocate_in`: fh, offset, length (u64), mode, padding (u32).
fn fallocate(o: &Ops, req: &Request, _: &mut Out) -> Res {
    let mut a = Args::new(req.op);
    let (_fh, offset, len, mode) =
        (|| Some((a.u64()?, a.u64()?, a.u64()?, a.u32()?)))().ok_or(EINVAL)?;
    o.fs.fallocate(req.hdr.nodeid, offset, len, mode as i32)?;
    // The kernel neither drops set-ID bits on fallocate nor asks us to (no
    // flag in `fuse_fallocate_in`); a local filesystem drops them for a
    // caller without CAP_FSETID, which the request does not carry: taken
    // as "not root".
    if req.hdr.uid != 0 {
        o.kill_privs(req.hdr.nodeid)?;
    }
    Ok(())
}

/// `fuse_lseek_in`: fh, offset (u64), whence, padding (u32). Only
/// SEEK_DATA and SEEK_HOLE get here; the kernel does the rest.
fn lseek(o: &Ops, req: &Request, out: &mut Out) -> Res {
    if o.writeback {
        // With the writeback cache, data the kernel has not written back
        // yet is invisible to the core (the kernel does not flush before
        // FUSE_LSEEK), so the core would report holes, or ENXIO, where
        // there is data. ENOSYS makes the kernel use its generic lseek from
        // now on: the whole file is data, which is always right.
        return Err(Errno(libc::ENOSYS));
    }
    let mut a = Args::new(req.op);
    let (_fh, offset, whence) = (|| Some((a.u64()?, a.u64()?, a.u32()?)))().ok_or(EINVAL)?;
    let Ok(offset) = i64::try_from(offset) else {
        return Err(Errno(libc::ENXIO));
    };
    let at = o.fs.lseek(req.hdr.nodeid, offset as u64, whence as i32)?;
    let at = i64::try_from(at).map_err(|_| Errno(libc::EOVERFLOW))?;
    Ok(out.u64(at as u64)?)
}

#[cfg(test)]
mod tests;
