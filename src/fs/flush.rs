//! When commits happen: on request (a close, the dirty limit), on a timer,
//! and for `fsync`, with group commit: an `fsync` that arrives while a
//! commit runs waits for it and then needs one more commit only if no commit
//! has started since it arrived.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::fs::error::FsResult;

#[derive(Default)]
struct State {
    requested: bool,
    stopped: bool,
    /// Commits started so far (each takes a cut of all changes made before it).
    started: u64,
    /// The highest-numbered commit that succeeded.
    succeeded: u64,
}

#[derive(Default)]
pub(crate) struct Flusher {
    state: Mutex<State>,
    wake: Condvar,
    /// One commit at a time.
    running: Mutex<()>,
    /// Callers inside `sync` (for tests that wait until fsyncs are queued).
    pub(crate) in_sync: std::sync::atomic::AtomicUsize,
}

impl Flusher {
    /// Asks the committer thread for a commit soon.
    pub fn request(&self) {
        self.state.lock().requested = true;
        self.wake.notify_one();
    }

    /// Waits for a request or the interval; false once stopped.
    pub fn wait(&self, interval: Duration) -> bool {
        let mut st = self.state.lock();
        if !st.requested && !st.stopped {
            self.wake.wait_for(&mut st, interval);
        }
        st.requested = false;
        !st.stopped
    }

    /// Commits started so far.
    #[cfg(test)]
    pub fn started(&self) -> u64 {
        self.state.lock().started
    }

    pub fn stop(&self) {
        self.state.lock().stopped = true;
        self.wake.notify_all();
    }

    /// Runs one commit, alone.
    pub fn exclusive(&self, commit: impl FnOnce() -> FsResult<()>) -> FsResult<()> {
        let _one = self.running.lock();
        self.run(commit)
    }

    /// Runs one commit; the caller holds `running`.
    fn run(&self, commit: impl FnOnce() -> FsResult<()>) -> FsResult<()> {
        let n = {
            let mut st = self.state.lock();
            st.started += 1;
            st.started
        };
        let r = commit();
        if r.is_ok() {
            let mut st = self.state.lock();
            st.succeeded = st.succeeded.max(n);
        }
        r
    }

    /// Makes every change made before this call durable: returns as soon as
    /// a commit that started after the call has succeeded, running one if
    /// needed.
    pub fn sync(&self, commit: impl FnOnce() -> FsResult<()>) -> FsResult<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let ticket = self.state.lock().started;
        self.in_sync.fetch_add(1, Relaxed);
        let r = self.sync_after(ticket, commit);
        self.in_sync.fetch_sub(1, Relaxed);
        r
    }

    fn sync_after(&self, ticket: u64, commit: impl FnOnce() -> FsResult<()>) -> FsResult<()> {
        let _one = self.running.lock();
        if self.state.lock().succeeded > ticket {
            return Ok(());
        }
        // Still holding `running`: a waiter that lets go of it here would
        // let the next waiter find no commit started since its own arrival
        // either, and both would commit.
        self.run(commit)
    }
}
