//! The classic transport: threads that `read(2)` requests from `/dev/fuse`
//! and `write(2)` replies, one system call each way per request. Each
//! thread has its own clone of the descriptor (`FUSE_DEV_IOC_CLONE`), so the
//! kernel hands requests to whichever thread is waiting, without a shared
//! lock. It is the fallback where the kernel has no FUSE over io_uring, and,
//! under the ring transport, what serves the requests that still come
//! through `/dev/fuse` (see [`super::ring`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use super::fsyncs::{FsyncQueue, ReplyTo};
use super::ops::{Ops, Outcome, handler};
use super::wire::{IN_HEADER_LEN, InHeader, OUT_HEADER_LEN, Out, out_header};

/// Room for the largest request (a `max_write` write with its headers)
/// and the largest reply (a `max_pages` read).
pub fn buffer_len(max_write: u32) -> usize {
    max_write as usize + 4096
}

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// A new `/dev/fuse` descriptor attached to the same connection as `fd`.
pub fn clone_fd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated literal path; open has no other inputs.
    let raw = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let new = unsafe { OwnedFd::from_raw_fd(raw) };
    let master: u32 = fd.as_raw_fd() as u32;
    // SAFETY: the ioctl reads one u32 (the session's descriptor) from a
    // pointer valid for the call.
    if unsafe { libc::ioctl(new.as_raw_fd(), FUSE_DEV_IOC_CLONE, &master) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new)
}

/// What became of a request read from `/dev/fuse`.
pub enum Handled {
    /// The reply is in the buffer, this long (header included).
    Reply(usize),
    /// Nothing to send: the opcode takes no reply, or the request is too
    /// damaged to answer.
    Nothing,
    /// The request (this `unique`) waits for a commit: hand it to the
    /// fsyncs, or answer it with [`commit_reply`].
    Commit(u64),
}

/// Decodes one request read from `/dev/fuse` and runs it, leaving any
/// reply in `reply`.
pub fn handle(ops: &Ops, request: &[u8], reply: &mut [u8]) -> Handled {
    let Some(hdr) = InHeader::parse(request) else {
        tracing::warn!(len = request.len(), "a request shorter than its header");
        return Handled::Nothing;
    };
    let end = (hdr.len as usize).min(request.len());
    let body = request.get(IN_HEADER_LEN..end).unwrap_or_default();
    let arg = handler(hdr.opcode).map_or(0, |h| h.arg).min(body.len());
    let (op, payload) = body.split_at(arg);
    let req = hdr.request(op, payload);
    let (head, rest) = reply.split_at_mut(OUT_HEADER_LEN);
    let mut out = Out::new(rest);
    let (error, len) = match ops.dispatch(&req, &mut out) {
        Outcome::None => return Handled::Nothing,
        Outcome::Commit => return Handled::Commit(hdr.unique),
        Outcome::Reply(None) => (0, out.len()),
        Outcome::Reply(Some(e)) => (-e.0, 0),
    };
    match out_header(head, hdr.unique, error, len) {
        Some(()) => Handled::Reply(OUT_HEADER_LEN + len),
        None => Handled::Nothing,
    }
}

/// Commits, then writes the answer to the request `unique` into `reply`;
/// returns its length.
pub fn commit_reply(ops: &Ops, unique: u64, reply: &mut [u8]) -> Option<usize> {
    out_header(reply, unique, ops.commit_wait(), 0)?;
    Some(OUT_HEADER_LEN)
}

/// Serves `fd` until the connection ends (unmount: `ENODEV`); requests
/// that wait for a commit go to the fsync queue (`fsyncs`), which answers them on `fd`.
pub fn serve<'a>(
    ops: &Ops,
    fd: BorrowedFd<'a>,
    max_write: u32,
    served: &AtomicU64,
    fsyncs: &FsyncQueue<'a>,
) -> io::Result<()> {
    let mut request = vec![0u8; buffer_len(max_write)];
    let mut reply = vec![0u8; buffer_len(max_write)];
    loop {
        // SAFETY: the buffer is valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), request.as_mut_ptr().cast(), request.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The end: unmounted (ENODEV), or the connection aborted
                // (ECONNABORTED, seen when a detached mount's last user
                // leaves while requests are in flight).
                Some(libc::ENODEV | libc::ECONNABORTED) => return Ok(()),
                // Interrupted, or a request withdrawn before we read it.
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                _ => return Err(e),
            }
        }
        served.fetch_add(1, Ordering::Relaxed);
        match handle(ops, &request[..n as usize], &mut reply) {
            Handled::Reply(len) => send(fd, &reply[..len])?,
            Handled::Nothing => {}
            Handled::Commit(unique) => fsyncs.defer(ReplyTo::Dev { fd, unique }),
        }
    }
}

/// Writes a reply to `/dev/fuse`. `ENOENT` (the request was interrupted
/// and is gone) is not an error; `ENODEV` and `ECONNABORTED` are the end of
/// the connection, which the next read reports.
pub fn send(fd: BorrowedFd<'_>, reply: &[u8]) -> io::Result<()> {
    // SAFETY: the buffer is valid for reads of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV | libc::ECONNABORTED) => Ok(()),
            // The kernel refused this reply (and failed its request): a bug
            // of ours in one reply, not a reason to end the mount.
            Some(libc::EINVAL) => {
                tracing::error!(len = reply.len(), "the kernel refused a reply: {e}");
                Ok(())
            }
            _ => Err(e),
        };
    }
    Ok(())
}
