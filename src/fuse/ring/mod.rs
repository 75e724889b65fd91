//! FUSE over io_uring (Linux 6.14+): one kernel queue, one pinned thread
//! and one ring per core.
//!
//! The kernel keeps one queue per possible CPU and puts a request on the
//! queue of the CPU its caller runs on. Thread `t` serves queues `t`,
//! `t + threads`, ... from its own ring and is pinned to CPU `t`; with the
//! default of one thread per CPU each thread serves the queue of the core it
//! runs on, and with `-s` one thread serves every queue.
//!
//! ## Command flow (see [`abi`] for the memory layout)
//!
//! ```text
//! for each entry:  REGISTER(qid, iov = [header 288 B, payload])   ─┐ pending
//!                                                                  │
//! kernel: a request for queue qid → copied into a pending entry   │
//!         (in_header → in_out, arg 0 → op_in, other args → payload,
//!          ent_in_out.commit_id = unique, payload_sz) → CQE res 0 ◄┘
//! we:     decode, run the handler (super::ops), write out_header into
//!         in_out and the reply into payload, set payload_sz →
//!         COMMIT_AND_FETCH(qid, commit_id): reply and wait for the next
//!         request in one submission, no system call of its own.
//! ```
//!
//! REGISTER is the first fetch: its CQE arrives with a request in the
//! entry. The ring becomes live only once every queue has an entry; until
//! then, and for FORGET and INTERRUPT always, requests come through
//! `/dev/fuse`, which thread 0 keeps serving: a poll on it sits in thread
//! 0's ring beside the queue entries, and when it fires the thread reads
//! the descriptor (non-blocking) until it is empty.
//!
//! ## Buffers and their lifetime
//!
//! An entry's buffers are plain memory (the kernel copies in and out, it
//! pins nothing) that the kernel touches only while a command naming them
//! is pending, and only from this thread's context. So between a CQE and
//! the next submission for that entry the thread owns them. They are freed
//! only when no command naming them is pending; a thread that must give up
//! with commands pending leaks them instead.
//!
//! ## The end
//!
//! At unmount the kernel aborts the connection: pending commands complete
//! with `-ENOTCONN`, a commit after that fails the same way, the poll on
//! `/dev/fuse` fires and the read says `ENODEV`. A thread ends when it has
//! nothing pending. Waits are bounded (half a second) so that a thread can
//! notice another thread's sighting of the end; if commands are still
//! pending two seconds after it, the thread gives up (leaking their
//! buffers) rather than hold up the final commit.

pub mod abi;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::classic;
use super::fsyncs::{FsyncQueue, Mailbox, ReplyTo};
use super::ops::{Ops, Outcome, handler};
use super::wire::{IN_HEADER_LEN, InHeader, OUT_HEADER_LEN, Out, out_header};
use abi::{CMD_COMMIT_AND_FETCH, CMD_REGISTER, IN_OUT_HEADER_SZ, ReqHeader, UringCmdReq};

/// `user_data` of the poll on `/dev/fuse` and of the poll on the mailbox;
/// entries use their index.
const DEV_POLL: u64 = u64::MAX;
const MAILBOX_POLL: u64 = u64::MAX - 1;

/// Requests with at most this much payload are copied out of the entry so
/// the reply can be written straight into its payload buffer; larger ones
/// (writes) get their small reply written aside and copied in.
const SMALL_INPUT: usize = 4096;
const REPLY_ASIDE: usize = 64 * 1024;

/// How long a thread keeps waiting for its pending commands once the
/// connection is known to be gone.
const GIVE_UP_AFTER: Duration = Duration::from_secs(2);

/// Serves the kernel's io_uring queues (and `/dev/fuse` beside them) with
/// `threads` threads until the connection ends.
/// If a thread fails, `abort` ends the connection: the kernel would
/// otherwise wait forever for the queues that thread served.
pub fn serve(
    ops: &Ops,
    fd: BorrowedFd<'_>,
    threads: usize,
    depth: u32,
    payload_len: usize,
    abort: &(dyn Fn() + Sync),
) -> io::Result<()> {
    let queues = queue_count();
    let threads = threads.clamp(1, queues);
    let depth = depth.max(1);
    // Thread 0 reads `/dev/fuse` only when polled ready; non-blocking, so a
    // request someone else took (or a spurious wakeup) cannot stall it.
    // SAFETY: fcntl on a descriptor that outlives this call.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let gone = AtomicBool::new(false);
    let pin = threads > 1;
    // A thread that fails leaves its queues without entries, and the
    // kernel waits for them forever: end the connection, so every thread
    // sees the end and the mount reports the error.
    let failed = |r: io::Result<()>| {
        if let Err(e) = &r {
            tracing::error!("a ring thread failed ({e}); ending the connection");
            gone.store(true, Ordering::Release);
            abort();
        }
        r
    };
    let fsyncs = FsyncQueue::new(ops);
    std::thread::scope(|s| {
        let fsyncs = &fsyncs;
        let fsync_thread = fsyncs.spawn(s)?;
        let mut workers = Vec::new();
        let mut spawned = Ok(());
        for t in 1..threads {
            let failed = &failed;
            let gone = &gone;
            let w = std::thread::Builder::new()
                .name(format!("zippy-ring-{t}"))
                .spawn_scoped(s, move || {
                    super::pin_me(t, pin);
                    let qids = (t..queues).step_by(threads).collect();
                    failed(
                        Queues::new(ops, fd, qids, depth, payload_len, false, gone, fsyncs)
                            .and_then(|q| q.run()),
                    )
                });
            match w {
                Ok(w) => workers.push(w),
                Err(e) => {
                    spawned = failed(Err(e));
                    break;
                }
            }
        }
        super::pin_me(0, pin);
        let qids = (0..queues).step_by(threads).collect();
        let r = spawned.and_then(|()| {
            failed(
                Queues::new(ops, fd, qids, depth, payload_len, true, &gone, fsyncs)
                    .and_then(|q| q.run()),
            )
        });
        let r = super::join_all(r, workers);
        fsyncs.stop();
        let _ = fsync_thread.join();
        r
    })
}

/// Whether this process may set up the rings the transport needs.
pub fn probe() -> Result<(), String> {
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .build(2)
        .map(drop)
        .map_err(|e| format!("io_uring cannot be set up here ({e})"))
}

/// The kernel's queue count: one per possible CPU (`num_possible_cpus`,
/// the CPUs listed in /sys/devices/system/cpu/possible, e.g. "0-3,8-11").
pub fn queue_count() -> usize {
    let listed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| count_cpus(s.trim()));
    listed
        .unwrap_or_else(|| {
            // SAFETY: no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            usize::try_from(n).unwrap_or(1)
        })
        .max(1)
}

fn count_cpus(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

/// The payload buffer each entry needs: the kernel refuses entries smaller
/// than max(FUSE_MIN_READ_BUFFER, max_write, max_pages × page size).
pub fn payload_len(max_write: u32, max_readahead: u32) -> usize {
    const PAGE: usize = 4096;
    let max_pages = (max_write.max(max_readahead) as usize).div_ceil(PAGE);
    (max_pages * PAGE).max(max_write as usize).max(8192)
}

/// What an entry last asked of the kernel, to repeat it on `EAGAIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Register,
    Commit(u64),
}

/// One ring entry: the header area and payload buffer the kernel was given.
/// Raw pointers, not references: the kernel writes them while a command
/// naming them is pending.
struct Entry {
    header: NonNull<ReqHeader>,
    payload: NonNull<u8>,
    payload_len: usize,
    qid: u16,
    /// Read by the kernel when it takes the REGISTER.
    iov: Box<[libc::iovec; 2]>,
    last: Cmd,
    pending: bool,
    /// The request in the entry waits for the fsync queue's answer; the commit
    /// id to reply to.
    deferred: Option<u64>,
}

impl Entry {
    fn new(qid: u16, payload_len: usize) -> Entry {
        // SAFETY: all-zero is a valid ReqHeader (integers and byte arrays).
        let header: Box<ReqHeader> = Box::new(unsafe { std::mem::zeroed() });
        let header = NonNull::from(Box::leak(header));
        let payload = Box::leak(vec![0u8; payload_len].into_boxed_slice());
        let payload = NonNull::from(payload).cast::<u8>();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_ptr().cast(),
                iov_len: size_of::<ReqHeader>(),
            },
            libc::iovec {
                iov_base: payload.as_ptr().cast(),
                iov_len: payload_len,
            },
        ]);
        Entry {
            header,
            payload,
            payload_len,
            qid,
            iov,
            last: Cmd::Register,
            pending: false,
            deferred: None,
        }
    }

    /// The SQE for `cmd`, naming this entry.
    fn sqe(&self, fd: i32, cmd: Cmd, index: usize) -> squeue::Entry128 {
        let req = UringCmdReq {
            flags: 0,
            commit_id: match cmd {
                Cmd::Register => 0,
                Cmd::Commit(id) => id,
            },
            qid: self.qid,
            padding: [0; 6],
        };
        let mut area = [0u8; 80];
        area[0..8].copy_from_slice(&req.flags.to_le_bytes());
        area[8..16].copy_from_slice(&req.commit_id.to_le_bytes());
        area[16..18].copy_from_slice(&req.qid.to_le_bytes());
        let op = match cmd {
            Cmd::Register => CMD_REGISTER,
            Cmd::Commit(_) => CMD_COMMIT_AND_FETCH,
        };
        let mut b = opcode::UringCmd80::new(types::Fd(fd), op).cmd(area);
        if cmd == Cmd::Register {
            b = b.addr(Some(self.iov.as_ptr() as u64));
        }
        let sqe = b.build().user_data(index as u64);
        if cmd == Cmd::Register {
            with_len(sqe, 2) // the iovec count; UringCmd80 leaves it 0
        } else {
            sqe
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.pending {
            // The kernel may still write here: leak rather than free.
            return;
        }
        // SAFETY: both were leaked from boxes of exactly these types and
        // sizes in `new`, and no pending command names them any more.
        unsafe {
            drop(Box::from_raw(self.header.as_ptr()));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload.as_ptr(),
                self.payload_len,
            )));
        }
    }
}

/// Sets an SQE's `len` field (offset 24 of `struct io_uring_sqe`), which
/// FUSE's REGISTER reads as the number of iovecs and the io-uring crate's
/// `UringCmd80` builder does not expose.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `repr(C)`: a 64-byte `io_uring_sqe` then 64
    // bytes of command area, all plain integers, so it and `[u8; 128]`
    // have the same size and every bit pattern is valid for both.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// One thread's ring, its entries, and (on thread 0) `/dev/fuse`.
struct Queues<'a> {
    ops: &'a Ops,
    fd: BorrowedFd<'a>,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    entries: Vec<Entry>,
    /// Serves `/dev/fuse` too, with these buffers (request, reply).
    dev: Option<(Vec<u8>, Vec<u8>)>,
    dev_polling: bool,
    gone: &'a AtomicBool,
    gone_at: Option<Instant>,
    small_input: Vec<u8>,
    reply_aside: Vec<u8>,
    /// Where requests waiting for a commit go, and where their answers
    /// come back (see `super::fsyncs`).
    fsyncs: &'a FsyncQueue<'a>,
    mailbox: Arc<Mailbox>,
}

impl<'a> Queues<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ops: &'a Ops,
        fd: BorrowedFd<'a>,
        qids: Vec<usize>,
        depth: u32,
        payload_len: usize,
        serve_dev: bool,
        gone: &'a AtomicBool,
        fsyncs: &'a FsyncQueue<'a>,
    ) -> io::Result<Queues<'a>> {
        let n = qids.len() as u32 * depth + 2;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(n.next_power_of_two() * 2)
            .build(n.next_power_of_two())?;
        let mut entries = Vec::new();
        for q in qids {
            let qid = u16::try_from(q).map_err(|_| io::Error::other("too many CPUs"))?;
            for _ in 0..depth {
                entries.push(Entry::new(qid, payload_len));
            }
        }
        let dev = serve_dev.then(|| {
            let len = classic::buffer_len(payload_len as u32);
            (vec![0u8; len], vec![0u8; len])
        });
        Ok(Queues {
            ops,
            fd,
            ring,
            entries,
            dev,
            dev_polling: false,
            gone,
            gone_at: None,
            small_input: vec![0u8; SMALL_INPUT],
            reply_aside: vec![0u8; REPLY_ASIDE],
            fsyncs,
            mailbox: Arc::new(Mailbox::new()?),
        })
    }

    /// Commands the kernel holds for us, and requests we still owe an
    /// answer: the thread ends when there are none (the mailbox poll does
    /// not count; it only brings answers for deferred requests).
    fn pending(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.pending || e.deferred.is_some())
            .count()
            + usize::from(self.dev_polling)
    }

    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: every buffer an SQE names (an entry's iovec and the
        // buffers it points to) lives until that SQE's CQE; see `Entry`.
        while unsafe { self.ring.submission().push(sqe) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn submit_entry(&mut self, i: usize, cmd: Cmd) -> io::Result<()> {
        let sqe = self.entries[i].sqe(self.fd.as_raw_fd(), cmd, i);
        self.entries[i].last = cmd;
        self.entries[i].pending = true;
        self.push(&sqe)
    }

    fn poll_dev(&mut self) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(self.fd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(DEV_POLL);
        self.dev_polling = true;
        self.push(&squeue::Entry128::from(sqe))
    }

    fn poll_mailbox(&mut self) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(
            types::Fd(self.mailbox.fd().as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(MAILBOX_POLL);
        self.push(&squeue::Entry128::from(sqe))
    }

    /// The fsync queue answered deferred requests: commit their entries.
    fn on_mailbox(&mut self) -> io::Result<()> {
        for (i, unique, error) in self.mailbox.take() {
            let Some(e) = self.entries.get_mut(i) else {
                continue;
            };
            let Some(commit_id) = e.deferred.take() else {
                continue;
            };
            // SAFETY: the entry is ours (no command pending for it) until
            // the commit below; see `Entry`.
            let header = unsafe { &mut *e.header.as_ptr() };
            let _ = out_header(&mut header.in_out[..OUT_HEADER_LEN], unique, error, 0);
            header.ent_in_out.payload_sz = 0;
            self.submit_entry(i, Cmd::Commit(commit_id))?;
        }
        self.poll_mailbox()
    }

    fn run(mut self) -> io::Result<()> {
        for i in 0..self.entries.len() {
            self.submit_entry(i, Cmd::Register)?;
        }
        if self.dev.is_some() {
            self.poll_dev()?;
        }
        self.poll_mailbox()?;
        let mut done = Vec::new();
        loop {
            if self.gone.load(Ordering::Acquire) && self.gone_at.is_none() {
                self.gone_at = Some(Instant::now());
            }
            let pending = self.pending();
            if pending == 0 {
                return Ok(());
            }
            if let Some(at) = self.gone_at
                && at.elapsed() > GIVE_UP_AFTER
            {
                tracing::warn!(
                    pending,
                    "the connection is gone but ring commands (or fsync answers) are still pending; leaving them"
                );
                return Ok(());
            }
            let ts = types::Timespec::from(Duration::from_millis(500));
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            done.clear();
            done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(data, res) in &done {
                if data == DEV_POLL {
                    self.dev_polling = false;
                    self.on_dev(res)?;
                } else if data == MAILBOX_POLL {
                    self.on_mailbox()?;
                } else {
                    self.on_entry(data as usize, res)?;
                }
            }
        }
    }

    fn connection_gone(&mut self) {
        self.gone.store(true, Ordering::Release);
        self.gone_at.get_or_insert_with(Instant::now);
    }

    /// `/dev/fuse` is readable (or the connection ended): serve what is
    /// there, then poll again.
    fn on_dev(&mut self, res: i32) -> io::Result<()> {
        let Some((request, reply)) = self.dev.as_mut() else {
            return Ok(());
        };
        if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN {
            return Err(io::Error::from_raw_os_error(-res));
        }
        let served = &self.ops.counts.dev;
        loop {
            // SAFETY: the buffer is valid for writes of its length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    request.as_mut_ptr().cast(),
                    request.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR | libc::ENOENT) => break,
                    Some(libc::ENODEV | libc::ECONNABORTED) => {
                        self.connection_gone();
                        return Ok(()); // no more polling
                    }
                    _ => return Err(e),
                }
            }
            served.fetch_add(1, Ordering::Relaxed);
            // Requests come this way only before the ring is ready, so one
            // waiting for a commit is rare: answered here, after the commit.
            let len = match classic::handle(self.ops, &request[..n as usize], reply) {
                classic::Handled::Reply(len) => Some(len),
                classic::Handled::Nothing => None,
                classic::Handled::Commit(unique) => classic::commit_reply(self.ops, unique, reply),
            };
            if let Some(len) = len {
                classic::send(self.fd, &reply[..len])?;
            }
        }
        self.poll_dev()
    }

    fn on_entry(&mut self, i: usize, res: i32) -> io::Result<()> {
        let Some(e) = self.entries.get_mut(i) else {
            tracing::warn!(user_data = i, "a completion for no entry of ours");
            return Ok(());
        };
        e.pending = false;
        match -res {
            0 => {}
            // Try again (the kernel was not ready, e.g. INIT still being
            // processed).
            libc::EAGAIN | libc::EINTR => {
                std::thread::sleep(Duration::from_millis(1));
                let cmd = e.last;
                return self.submit_entry(i, cmd);
            }
            // The connection is gone: this entry is done.
            libc::ENOTCONN | libc::ECANCELED | libc::ECONNABORTED | libc::ENODEV => {
                self.connection_gone();
                return Ok(());
            }
            errno => {
                let err = io::Error::from_raw_os_error(errno);
                tracing::error!(qid = e.qid, "ring command {:?} failed: {err}", e.last);
                return Err(err);
            }
        }
        self.ops.counts.ring.fetch_add(1, Ordering::Relaxed);
        match self.handle(i) {
            Some(commit_id) => self.submit_entry(i, Cmd::Commit(commit_id)),
            None => Ok(()), // deferred: committed when the fsync queue answers
        }
    }

    /// Runs the request in entry `i` and leaves the reply in it; returns
    /// the commit id to reply to, or `None` if the request went to the
    /// fsync queue (the entry waits, uncommitted, for its answer).
    fn handle(&mut self, i: usize) -> Option<u64> {
        let e = &self.entries[i];
        // SAFETY: a CQE for this entry has arrived and nothing is pending
        // for it, so the kernel does not touch its buffers until we submit
        // again (see `Entry`); this thread alone uses them meanwhile.
        let header = unsafe { &mut *e.header.as_ptr() };
        // SAFETY: as above.
        let payload = unsafe { std::slice::from_raw_parts_mut(e.payload.as_ptr(), e.payload_len) };
        let commit_id = header.ent_in_out.commit_id;
        let in_len = (header.ent_in_out.payload_sz as usize).min(payload.len());
        const { assert!(IN_OUT_HEADER_SZ >= IN_HEADER_LEN) };
        let Some(hdr) = InHeader::parse(&header.in_out) else {
            // Cannot happen (the area is 128 bytes, the header 40); answer
            // EIO rather than leave the entry stuck.
            let _ = out_header(&mut header.in_out, commit_id, -libc::EIO, 0);
            header.ent_in_out.payload_sz = 0;
            return Some(commit_id);
        };
        // Arg 0 is as long as the request's length says (header, arg 0 and
        // payload), and no longer than the table's size for the opcode: a
        // shorter one reaches the handler short (EINVAL), not padded with
        // the previous request's bytes.
        let declared = (hdr.len as usize).saturating_sub(IN_HEADER_LEN + in_len);
        let arg = handler(hdr.opcode)
            .map_or(0, |h| h.arg)
            .min(declared)
            .min(header.op_in.len());
        let op = &header.op_in[..arg];
        // Input and reply share the payload buffer: copy the smaller side.
        let (outcome, reply_len) = if in_len <= SMALL_INPUT {
            self.small_input[..in_len].copy_from_slice(&payload[..in_len]);
            let req = hdr.request(op, &self.small_input[..in_len]);
            let mut out = Out::new(payload);
            let r = self.ops.dispatch(&req, &mut out);
            (r, out.len())
        } else {
            let req = hdr.request(op, &payload[..in_len]);
            let mut out = Out::new(&mut self.reply_aside);
            let r = self.ops.dispatch(&req, &mut out);
            let n = out.len();
            match payload.get_mut(..n) {
                Some(dst) => {
                    dst.copy_from_slice(&self.reply_aside[..n]);
                    (r, n)
                }
                // Cannot happen (replies to large requests are a few bytes
                // and the payload buffer is at least 8 KiB); fail the
                // request rather than panic.
                None => (Outcome::Reply(Some(super::ops::Errno(libc::EIO))), 0),
            }
        };
        let (error, len) = match outcome {
            // No-reply opcodes (FORGET, INTERRUPT) come through /dev/fuse;
            // should one come here, the entry must still be committed.
            Outcome::Reply(None) | Outcome::None => (0, reply_len),
            Outcome::Reply(Some(e)) => (-e.0, 0),
            Outcome::Commit => {
                self.entries[i].deferred = Some(commit_id);
                self.fsyncs.defer(ReplyTo::Ring {
                    mailbox: Arc::clone(&self.mailbox),
                    entry: i,
                    unique: hdr.unique,
                });
                return None;
            }
        };
        let _ = out_header(&mut header.in_out[..OUT_HEADER_LEN], hdr.unique, error, len);
        header.ent_in_out.payload_sz = len as u32;
        Some(commit_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possible_cpu_lists_are_counted() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-1"), Some(2));
        assert_eq!(count_cpus("0-3,8-11"), Some(8));
        assert_eq!(count_cpus("x"), None);
    }

    #[test]
    fn payload_is_at_least_what_the_kernel_checks() {
        assert_eq!(payload_len(1 << 20, 128 << 10), 1 << 20);
        assert_eq!(payload_len(4096, 128 << 10), 128 << 10);
        assert_eq!(payload_len(1000, 1000), 8192);
        assert_eq!(payload_len((1 << 20) + 1, 0), (1 << 20) + 4096);
    }

    #[test]
    fn register_sqe_carries_the_iovec_pair_and_queue() {
        let e = Entry::new(3, 8192);
        let sqe = e.sqe(7, Cmd::Register, 5);
        // SAFETY: as in `with_len`: plain bytes of a repr(C) SQE.
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(raw[0], io_uring::opcode::UringCmd80::CODE);
        assert_eq!(i32::from_ne_bytes(raw[4..8].try_into().unwrap()), 7); // fd
        let addr = u64::from_ne_bytes(raw[16..24].try_into().unwrap());
        assert_eq!(addr, e.iov.as_ptr() as u64);
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2); // len
        assert_eq!(
            u32::from_ne_bytes(raw[8..12].try_into().unwrap()),
            CMD_REGISTER
        ); // cmd_op
        assert_eq!(u64::from_ne_bytes(raw[32..40].try_into().unwrap()), 5); // user_data
        // The command area starts at byte 48: flags, commit_id, qid.
        assert_eq!(u16::from_ne_bytes(raw[64..66].try_into().unwrap()), 3);
        let commit = e.sqe(7, Cmd::Commit(99), 5);
        // SAFETY: as above.
        let raw: [u8; 128] = unsafe { std::mem::transmute(commit) };
        assert_eq!(
            u32::from_ne_bytes(raw[8..12].try_into().unwrap()),
            CMD_COMMIT_AND_FETCH
        );
        assert_eq!(u64::from_ne_bytes(raw[56..64].try_into().unwrap()), 99);
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 0);
    }
}
