//! `fsync` answered off the transport threads.
//!
//! An `fsync` waits for a commit, and a commit waits for the disk (an
//! `fdatasync`, hundreds of microseconds). Run on the transport thread that
//! received it, it would hold up every other request of that thread's queue
//! meanwhile, and group commit could join at most one `fsync` per transport
//! thread. Instead the transport hands the request to the fsync queue and goes on
//! serving; the queue's thread takes every `fsync` waiting, runs one commit
//! that started after all of them arrived, and answers them all: with many
//! writers calling `fsync` at once, one `fdatasync` answers them together.
//!
//! Answers go back the way the request came: a reply written to the
//! `/dev/fuse` descriptor it was read from, or, for a ring entry, the result
//! left in the ring thread's [`Mailbox`] and an eventfd poked, so that the
//! ring thread (the only one that submits to its ring) commits the entry.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::classic;
use super::ops::Ops;
use super::wire::{OUT_HEADER_LEN, out_header};

/// Where the answer to one waiting `fsync` goes.
pub enum ReplyTo<'a> {
    /// A request read from this `/dev/fuse` descriptor (each classic thread
    /// has its own clone, and a reply must go back through the clone the
    /// request came from).
    Dev { fd: BorrowedFd<'a>, unique: u64 },
    /// A request held in entry `entry` of the ring thread owning `mailbox`.
    Ring {
        mailbox: Arc<Mailbox>,
        entry: usize,
        unique: u64,
    },
}

/// Results of deferred requests for one ring thread to commit.
pub struct Mailbox {
    /// (entry, unique, error) of each answered request.
    done: Mutex<Vec<(usize, u64, i32)>>,
    /// Poked for each answer; the ring thread polls it.
    event: OwnedFd,
}

impl Mailbox {
    pub fn new() -> io::Result<Mailbox> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Mailbox {
            done: Mutex::new(Vec::new()),
            // SAFETY: a descriptor we just created and own.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.event.as_fd()
    }

    /// Takes the answers left so far (and resets the eventfd).
    pub fn take(&self) -> Vec<(usize, u64, i32)> {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a u64 valid for writes; non-blocking.
        let _ = unsafe {
            libc::read(
                self.event.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                size_of::<u64>(),
            )
        };
        std::mem::take(&mut *self.done.lock())
    }

    fn post(&self, entry: usize, unique: u64, error: i32) {
        self.done.lock().push((entry, unique, error));
        let one = 1u64;
        // SAFETY: writes 8 bytes from a u64 valid for reads.
        let _ = unsafe {
            libc::write(
                self.event.as_raw_fd(),
                (&one as *const u64).cast(),
                size_of::<u64>(),
            )
        };
    }
}

#[derive(Default)]
struct State<'a> {
    waiting: Vec<ReplyTo<'a>>,
    stopped: bool,
}

pub struct FsyncQueue<'a> {
    ops: &'a Ops,
    state: Mutex<State<'a>>,
    wake: Condvar,
}

impl<'a> FsyncQueue<'a> {
    pub fn new(ops: &'a Ops) -> FsyncQueue<'a> {
        FsyncQueue {
            ops,
            state: Mutex::new(State {
                waiting: Vec::new(),
                stopped: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Queues a request that waits for a commit (once the queue's thread has
    /// stopped, which only an error path can meet, commits and answers at
    /// once instead).
    pub fn defer(&self, reply: ReplyTo<'a>) {
        {
            let mut st = self.state.lock();
            if !st.stopped {
                st.waiting.push(reply);
                self.wake.notify_one();
                return;
            }
        }
        answer(reply, self.commit());
    }

    /// Commits and returns the answer for the requests waiting on it. A
    /// panic in the commit fails them (EIO) instead of leaving them
    /// unanswered and every later fsync with them.
    fn commit(&self) -> i32 {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.ops.commit_wait()))
            .unwrap_or_else(|_| {
                tracing::error!("a commit for fsync panicked; answering EIO");
                -libc::EIO
            })
    }

    /// Starts the queue's thread in scope `s`; [`FsyncQueue::stop`] ends it.
    pub fn spawn<'scope>(
        &'scope self,
        s: &'scope std::thread::Scope<'scope, '_>,
    ) -> io::Result<std::thread::ScopedJoinHandle<'scope, ()>> {
        std::thread::Builder::new()
            .name("zippy-fsync".into())
            .spawn_scoped(s, || self.run())
    }

    /// The queue's thread: until stopped, answers every waiting request
    /// after a commit that started once it was waiting.
    fn run(&self) {
        loop {
            let batch = {
                let mut st = self.state.lock();
                while st.waiting.is_empty() && !st.stopped {
                    self.wake.wait(&mut st);
                }
                if st.waiting.is_empty() {
                    return;
                }
                std::mem::take(&mut st.waiting)
            };
            // Every request in the batch arrived before this call, and
            // `fsync` returns only after a commit that started after it.
            let error = self.commit();
            for r in batch {
                answer(r, error);
            }
        }
    }

    /// Ends `run` once what is waiting has been answered.
    pub fn stop(&self) {
        self.state.lock().stopped = true;
        self.wake.notify_all();
    }
}

fn answer(r: ReplyTo<'_>, error: i32) {
    match r {
        ReplyTo::Dev { fd, unique } => {
            let mut buf = [0u8; OUT_HEADER_LEN];
            if out_header(&mut buf, unique, error, 0).is_some()
                && let Err(e) = classic::send(fd, &buf)
            {
                // The connection is ending; the transport sees it too.
                tracing::debug!("an fsync reply was not delivered: {e}");
            }
        }
        ReplyTo::Ring {
            mailbox,
            entry,
            unique,
        } => mailbox.post(entry, unique, error),
    }
}
